"""Think-Then-Embed, in a browser: ask about an image or a text, read the model's reasoning trace, and see how the
ranking of the candidates changes when the model does not think first.

    python space/app.py      # from the repository, after scripts/demo.sh built models/tte-mini: http://127.0.0.1:7860

The model loads exactly as a Space loads it from the Hub: `AutoModel.from_pretrained(..., trust_remote_code=True)`.
It is `TTE_MODEL` (a Hub id or a local folder) if set, else `models/tte-mini` if that folder exists, else
`HUB_MODEL`. Errors in what a user gives (not an image, too many pixels, no candidates) come from the model's own
input checks, which name the offending item, and are shown in the page.
"""

import functools
import json
import os
import sys
import threading

import gradio as gr
import numpy as np
import pandas as pd
import torch
from transformers import AutoModel, TextIteratorStreamer


LOCAL_MODEL, HUB_MODEL = "models/tte-mini", "your-org/tte-mini"  # set HUB_MODEL to the repository you pushed
MODEL = os.environ.get("TTE_MODEL") or (LOCAL_MODEL if os.path.isdir(LOCAL_MODEL) else HUB_MODEL)
HERE = os.path.dirname(os.path.abspath(__file__))
EXAMPLES = os.path.join(HERE, "examples", "examples.json")
MAX_UPLOAD = "4mb"  # per file; the model's processor also refuses images over its pixel budget
MAX_CANDIDATES = 64
CHART_BARS = 10  # the chart shows the top 10; the list under it shows every candidate
CONCURRENCY = 1  # requests that run at once; the others wait in the queue (a CPU Space has few cores)
QUEUE_SIZE = 16


def load_model(name: str = MODEL):
    model = AutoModel.from_pretrained(name, trust_remote_code=True).eval()
    # The choices the page offers are the model's own: its think policies (auto only with a gate, tasks only with
    # think_tasks; a model whose code predates that setting has none) and its prompt families.
    needs = {"auto": model.config.gate_threshold, "tasks": getattr(model.config, "think_tasks", None)}
    policies = [policy for policy in sys.modules[type(model.config).__module__].THINK_POLICIES
                if needs.get(policy, True) is not None]  # fmt: skip
    tasks = model.processor.task_families
    return model, policies, tasks


def read_file(path: str | None) -> bytes | None:
    """An upload's bytes: the model decodes and checks them, so a non-image gets the processor's error."""
    if path is None:
        return None
    with open(path, "rb") as handle:
        return handle.read()


def query_input(text: str, image_path: str | None, instruction: str, task: str) -> dict:
    text, instruction = (text or "").strip(), (instruction or "").strip()
    if not text and image_path is None:
        raise gr.Error("Give a query: a text, an image, or both.")
    return {"text": text or None, "image": read_file(image_path), "instruction": instruction or None, "task": task}


def candidate_inputs(texts: str, image_paths: list[str] | None) -> tuple[list, list[str]]:
    """Candidates (texts, one per line, then images) and their labels."""
    lines = [line.strip() for line in (texts or "").splitlines() if line.strip()]
    paths = image_paths or []
    if not lines and not paths:
        raise gr.Error("Give candidates: texts (one per line) or images.")
    if len(lines) + len(paths) > MAX_CANDIDATES:
        raise gr.Error(f"{len(lines) + len(paths)} candidates: at most {MAX_CANDIDATES} per search.")
    labels = lines + [os.path.basename(path) for path in paths]
    return lines + [read_file(path) for path in paths], labels


def embed(model, inputs: list, **kwargs):
    """`model.embed`, with the model's input errors shown in the page instead of a stack trace."""
    try:
        with torch.inference_mode():
            return model.embed(inputs, **kwargs)
    except (ValueError, TypeError) as error:
        raise gr.Error(str(error)) from None


class QueryStream:
    """Embeds one query in a worker thread while its trace is generated. Iterating gives the trace written so far, a
    piece at a time; afterwards `result` is `embed`'s `(vectors, traces)`, or the error is raised."""

    def __init__(self, model, query: dict, think: str, max_new_tokens: int):
        # Only a built-in reasoner streams (a teacher-variant model's traces come from elsewhere).
        streams = model.config.variant != "teacher" and model.external_reasoner is None
        self.streamer = TextIteratorStreamer(model.processor.tokenizer, skip_prompt=True) if streams else None
        self.arguments = (model, [query], {"side": "query", "think": think, "return_reasoning": True,
                                           "max_new_tokens": max_new_tokens, "streamer": self.streamer})  # fmt: skip
        self.result, self.error = None, None

    def run(self) -> None:
        model, inputs, kwargs = self.arguments
        try:
            self.result = embed(model, inputs, **kwargs)
        except Exception as error:  # raised again in the request's thread, where Gradio shows it
            self.error = error
        finally:
            if self.streamer is not None:
                self.streamer.end()  # also when generation never started, so the iteration below ends

    def __iter__(self):
        worker = threading.Thread(target=self.run, daemon=True)
        worker.start()
        written = ""
        for piece in self.streamer or ():
            written += piece
            yield written
        worker.join()
        if self.error is not None:
            raise self.error


def ranking(scores: np.ndarray, labels: list[str]) -> tuple[pd.DataFrame, str]:
    """The candidates by descending score (ties keep their order): the top `CHART_BARS` as bar chart data, and all of
    them as a numbered list."""
    order = np.argsort(-scores, kind="stable")
    top = order[:CHART_BARS]
    table = pd.DataFrame({"candidate": [labels[i] for i in top], "score": [float(scores[i]) for i in top]})
    listing = "\n".join(f"{rank}. {labels[i]} ({scores[i]:.3f})" for rank, i in enumerate(order, start=1))
    return table, listing


def search(model, query_text, query_image, instruction, task, candidate_texts, candidate_images, think, max_new_tokens):
    """Rank the candidates for the query with the chosen think policy, and without thinking. A generator: the trace
    is shown as it is written, then the rankings."""
    query = query_input(query_text, query_image, instruction, task)
    candidates, labels = candidate_inputs(candidate_texts, candidate_images)
    stream = QueryStream(model, query, think, int(max_new_tokens))
    for written in stream:
        yield written, gr.skip(), gr.skip(), gr.skip(), gr.skip()
    query_vector, traces = stream.result
    documents = embed(model, candidates, side="document", think=think, max_new_tokens=int(max_new_tokens))
    # Without thinking: recomputed only where the chosen policy thought (documents think only under "always").
    plain_query = query_vector if think == "never" else embed(model, [query], side="query", think="never")
    plain_documents = documents if think != "always" else embed(model, candidates, side="document", think="never")
    thinking, thinking_list = ranking(documents @ query_vector[0], labels)
    plain, plain_list = ranking(plain_documents @ plain_query[0], labels)
    yield traces[0] or "(no thinking under this policy)", thinking, thinking_list, plain, plain_list


def compare(model, text_a, image_a, text_b, image_b, instruction, task, think, max_new_tokens):
    """Both inputs' traces and the cosine similarity of their embeddings (both embedded as queries)."""
    inputs = [query_input(text_a, image_a, instruction, task), query_input(text_b, image_b, instruction, task)]
    vectors, traces = embed(model, inputs, side="query", think=think, return_reasoning=True,
                            max_new_tokens=int(max_new_tokens))  # fmt: skip
    return traces[0], traces[1], f"**cosine similarity: {float(vectors[0] @ vectors[1]):.4f}**"


def load_examples() -> list[list]:
    """Preset searches (written by `python scripts/pictures.py`): held-out scenes and easy-VQA test images."""
    if not os.path.isfile(EXAMPLES):
        return []
    with open(EXAMPLES) as handle:
        rows = json.load(handle)
    return [[row["question"], os.path.join(HERE, "examples", row["image"]), row["instruction"], row["task"],
             "\n".join(row["candidates"])] for row in rows]  # fmt: skip


def policy_controls(policies, default: str):
    think = gr.Radio(list(policies), value=default, label="think", info="queries: only the query thinks")
    tokens = gr.Slider(1, 128, value=64, step=1, label="max_new_tokens (trace length bound)")
    return think, tokens


def search_tab(model, policies, tasks) -> None:
    with gr.Row():
        with gr.Column():
            query_image = gr.File(label="Query image", type="filepath", elem_id="query-image")
            query_text = gr.Textbox(label="Query text", placeholder="what is right of the blue circle?",
                                    elem_id="query-text")  # fmt: skip
            instruction = gr.Textbox(label="Instruction", value="Answer the question about the image.",
                                     elem_id="instruction")  # fmt: skip
            task = gr.Dropdown(list(tasks), value="vqa", label="Task family (ECR prompt)")
            think, tokens = policy_controls(policies, "queries")
        with gr.Column():
            candidate_texts = gr.Textbox(label="Candidate texts, one per line", lines=8, elem_id="candidates")
            candidate_images = gr.File(label="Candidate images", file_count="multiple", type="filepath")
    button = gr.Button("Search", variant="primary", elem_id="search")
    trace = gr.Textbox(label="Reasoning trace of the query", elem_id="trace")
    with gr.Row():
        with gr.Column():
            thinking_chart = gr.BarPlot(x="candidate", y="score", sort="-y", x_label_angle=-30, label="With thinking")
            thinking_list = gr.Markdown(elem_id="ranking-thinking")
        with gr.Column():
            plain_chart = gr.BarPlot(x="candidate", y="score", sort="-y", x_label_angle=-30,
                                     label="Without thinking")  # fmt: skip
            plain_list = gr.Markdown(elem_id="ranking-plain")
    inputs = [query_text, query_image, instruction, task, candidate_texts, candidate_images, think, tokens]
    # a partial, not a lambda: Gradio streams the outputs of what it can see is a generator function
    outputs = [trace, thinking_chart, thinking_list, plain_chart, plain_list]
    button.click(functools.partial(search, model), inputs, outputs, api_name="search")  # also for gradio_client
    examples = load_examples()
    if examples:
        gr.Examples(examples, [query_text, query_image, instruction, task, candidate_texts])


def compare_tab(model, policies, tasks) -> None:
    with gr.Row():
        with gr.Column():
            text_a, image_a = gr.Textbox(label="Input A text"), gr.File(label="Input A image", type="filepath")
        with gr.Column():
            text_b, image_b = gr.Textbox(label="Input B text"), gr.File(label="Input B image", type="filepath")
    instruction = gr.Textbox(label="Instruction (both inputs)", value="Describe the image.")
    task = gr.Dropdown(list(tasks), value="retrieval", label="Task family (ECR prompt)")
    think, tokens = policy_controls(policies, "always")
    button = gr.Button("Compare", variant="primary")
    with gr.Row():
        trace_a, trace_b = gr.Textbox(label="Trace A"), gr.Textbox(label="Trace B")
    similarity = gr.Markdown()
    inputs = [text_a, image_a, text_b, image_b, instruction, task, think, tokens]
    button.click(functools.partial(compare, model), inputs, [trace_a, trace_b, similarity], api_name="compare")


def build_demo(model, policies, tasks) -> gr.Blocks:
    with gr.Blocks(title="Think-Then-Embed") as demo:
        gr.Markdown(f"# Think-Then-Embed\n`{MODEL}` writes a reasoning trace about the query, then embeds the query "
                    "with it. The right-hand ranking is the same model without thinking.")  # fmt: skip
        with gr.Tab("Search"):
            search_tab(model, policies, tasks)
        with gr.Tab("Compare"):
            compare_tab(model, policies, tasks)
    return demo


def queued(demo: gr.Blocks, size: int = QUEUE_SIZE) -> gr.Blocks:
    """The demo behind gradio's queue: `CONCURRENCY` requests run at once, up to `size` more wait, and a request past
    that is refused with "queue is full" instead of piling up on a Space's few cores."""
    return demo.queue(default_concurrency_limit=CONCURRENCY, max_size=size)


if __name__ == "__main__":
    demo = queued(build_demo(*load_model()))
    demo.launch(max_file_size=MAX_UPLOAD, server_name=os.environ.get("GRADIO_SERVER_NAME", "127.0.0.1"))
