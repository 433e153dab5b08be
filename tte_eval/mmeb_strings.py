"""The stock MMEB instruction strings, copied verbatim (typos and trailing spaces included) with their sources.

These are benchmark data, not our model's prompts (those live in `processing_tte.py`). Any rewrite of them would be a
different protocol (harness doc §1.4) and must not be made here.
"""

# Abstract placeholders in the exact harness strings: where the backbone's image / video token run would go.
IMAGE_MARKER = "<image>"
VIDEO_MARKER = "<video>"
# The Phi-3 image token that the raw MMEB rows carry inline (harness doc §1.1).
RAW_IMAGE_TOKEN = "<|image_1|>"

# MMEB-V1 query instructions (harness doc §1.3; MCG-NJU/RGE `src/instruction_replacements-eval.yaml`, `original`).
_V1_QA = "Represent the given image with the following question:"
V1_QUERY_INSTRUCTIONS = {
    "ImageNet-1K": "Represent the given image for classification",
    "ImageNet-A": "Represent the given image for classification",
    "ImageNet-R": "Represent the given image for classification",
    "N24News": "Represent the given news image with the following caption for domain classification",
    "HatefulMemes": "Represent the given image for binary classification to determine whether it constitutes "
    "hateful speech or not",
    "VOC2007": "Identify the object shown in the image",
    "ObjectNet": "Identify the object shown in the image",
    "SUN397": "Identify the scene shown in the image",
    "Place365": "Identify the scene shown in the image",
    "Country211": "Identify the country depicted in the image",
    **{task: _V1_QA for task in ("OK-VQA", "A-OKVQA", "DocVQA", "InfographicsVQA", "ChartQA", "Visual7W",
                                 "ScienceQA", "VizWiz", "GQA", "TextVQA")},  # fmt: skip
    "VisDial": "Represent the given dialogue about an image, which is used for image retrieval",
    "CIRR": "Given an image, find a similar everyday image with the described changes",
    "VisualNews_t2i": "Retrieve an image of this news caption",
    "VisualNews_i2t": "Find a caption for the news in the given photo",
    "MSCOCO_t2i": "Find me an everyday image that matches the given caption",
    "MSCOCO_i2t": "Find an image caption describing the given everyday image",
    "NIGHTS": "Find a day-to-day image that looks similar to the provided image",
    "WebQA": "Find a Wikipedia image that answers this question",
    "OVEN": "Retrieve a Wikipedia image-description pair that provides evidence for the question of this image",
    "FashionIQ": "Find an image to match the fashion image and style note",
    "EDIS": "Find a news image that matches the provided caption",
    "Wiki-SS-NQ": "Find the document image that can answer the given query",
    "MSCOCO": "Crop the image to to isolate the object labeled as",  # eval wording, typo included
    "RefCOCO": "Select the portion of the image that follows the language expressions",
    "RefCOCO-Matching": "Select the portion of the image that follows the language expressions",
    "Visual7W-Pointing": "Select the portion of the image that answers the question",
}

# MMEB-V1 candidate-side instructions for image candidates (RGE `src/candidate_replacements.yaml`, originals).
# Text candidates (CLS, QA, i2t) carry no instruction. RefCOCO-Matching candidates use the query-style instruction.
_V1_IMAGE = "Represent the given image"
V1_CANDIDATE_INSTRUCTIONS = {
    **{task: _V1_IMAGE for task in ("VisDial", "CIRR", "VisualNews_t2i", "MSCOCO_t2i", "NIGHTS", "FashionIQ",
                                    "Wiki-SS-NQ")},  # fmt: skip
    "WebQA": "Represent the given Wikipedia image with related text information",
    "OVEN": "Represent the given Wikipedia image with related text information",
    "EDIS": "Represent the given image with related text information",
    "MSCOCO": "Represent the given cropped image of the object",
    "RefCOCO": "Represent the given cropped image of the object",
    "Visual7W-Pointing": "Represent the given cropped image of the object",
    "RefCOCO-Matching": V1_QUERY_INSTRUCTIONS["RefCOCO-Matching"],
}

# Video classification (VLM2Vec `src/data/eval_dataset/video_classification_utils.py: DATASET_INSTRUCTION`).
VIDEO_CLS_INSTRUCTIONS = {
    "K700": "Recognize the category of the video content.",
    "SmthSmthV2": "What actions or object interactions are being performed by the person in the video?",
    "UCF101": "What activities or sports are being performed by the person in the video?",
    "HMDB51": "What actions or objects interactions are the person in the video doing?",
    "Breakfast": "Recognize the breakfast type that the person is cooking in the video. ",  # trailing space in source
}

# Video QA (VLM2Vec `mvbench_dataset.py`, `videomme_dataset.py`, ...: `TASK_PROMPT`, trailing space included).
VIDEO_QA_PROMPT = (
    "Given a video and a question, select the most accurate answer from the provided candidates. "
    "Return only the exact text of your chosen answer. Question: "
)
ACTIVITYNETQA_OPTIONS = ["yes", "no"]

# Video retrieval (VLM2Vec `msrvtt_dataset.py` etc.: `TASK_INST_QRY`, `TASK_INST_TGT`).
VIDEO_RET_INSTRUCTIONS = {
    "MSR-VTT": "Find a video that contains the following visual content:",
    "MSVD": "Find the video snippet that corresponds to the given summary:",
    "DiDeMo": "Find a video that includes the following described scenes:",
    "VATEX": "Select a video that fits the description provided:",
    "YouCook2": "Find a video that demonstrates the following action while making a recipe:",
}
VIDEO_RET_CANDIDATE = "Understand the content of the provided video."

# Moment retrieval (VLM2Vec `moment_retrieval_datasets.py`, `momentseeker_dataset.py`).
MRET_QUERY = "Find the clip that corresponds to the described scene in the given video:"
MRET_CANDIDATE = "Understand the content of the provided video."
MOMENTSEEKER_TEXT_QUERY = "Find the clip that corresponds to the given text:"
MOMENTSEEKER_IMAGE_QUERY = "Select the video clip that aligns with the given text and image:"
MOMENTSEEKER_VIDEO_QUERY = "Find the clip that corresponds to the given sentence and video segment:"
MOMENTSEEKER_CANDIDATE = "Understand the content of the provided video clip."

# Visual documents (VLM2Vec `vidore_dataset.py`, `visrag_dataset.py`).
VISDOC_QUERY = "Find a document image that matches the given query:"
VISDOC_CANDIDATE = "Understand the content of the provided document image."


def harness_prompt(instruction: str, text: str | None = None, marker: str | None = None) -> str:
    """Join instruction, text and a leading media marker the way VLM2Vec's `process_input_text` does.

    `instruction + " " + text` (text only when non-empty), then `marker + " "` in front when a marker is given.
    """
    prompt = instruction
    if text:
        prompt = prompt + " " + text
    if marker:
        prompt = marker + " " + prompt
    return prompt
