"""Processor of a Think-Then-Embed (TTE) model: inputs, prompts and the embedding template.

Every prompt the project uses is defined in this file and nowhere else:

- `PROMPT_SETS`: the versioned embedding-centric reasoning (ECR) prompts, one per task family. Each asks for the trace
  format `<think> ... </think>` followed by a one-paragraph final reasoning.
- The reasoning prompt: the backbone's chat template over a system turn (the ECR prompt), a user turn (the image, if
  any, then the instruction and the text) and the opening of the assistant turn.
- The embedding input (one template for training and inference, for every variant):

      reasoning prompt + trace + EMBEDDING_TOKEN

  A document that does not think uses the empty trace. The embedding is the final state of `EMBEDDING_TOKEN`.
- The reasoner-SFT input: reasoning prompt + trace + the tokenizer's EOS (where generation stops), with labels on
  the trace and EOS only.
"""

import base64
import binascii
import hashlib
import http.client
import io
import ipaddress
import os
import socket
import ssl
import threading
import time
import urllib.parse
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from transformers import BatchFeature, ProcessorMixin, Qwen3VLProcessor
from transformers.utils import logging
from transformers.video_utils import VideoMetadata

from .video_tte import PATCH_PIXELS, Video, VideoSampling, load_video, looks_like_video_file


logger = logging.get_logger(__name__)

EMBEDDING_TOKEN = "<|emb|>"
THINK_START, THINK_END = "<think>", "</think>"
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif", ".tif", ".tiff")
DEFAULT_MAX_PIXELS = 28 * 28 * 1280  # Qwen-VL's default resize budget, as VLM2Vec-V2 trains with
DEFAULT_MAX_IMAGE_PIXELS = 8192 * 8192  # refuse to decode anything larger: a decompression bomb guard

_TRACE_FORMAT = (
    f"First think step by step inside {THINK_START} and {THINK_END}, then write one short paragraph of final "
    "reasoning that states the facts a retrieval system needs. Do not answer with anything else."
)
PROMPT_SETS = {
    "ecr-v1": {
        "classification": "You describe an input so that it can be matched to its class label. Name the main "
        "object, scene or topic and the visual or textual evidence for it. " + _TRACE_FORMAT,
        "vqa": "You answer a question about an input so that the answer can be retrieved. Reason step by step "
        "towards the answer, then state the answer and the evidence for it. " + _TRACE_FORMAT,
        "retrieval": "You describe an input so that matching images or texts can be retrieved. List its key "
        "entities, attributes, actions and relations, and what a match must contain. " + _TRACE_FORMAT,
        "grounding": "You locate the object that an expression refers to. Describe the referred object in detail "
        "and its surrounding visual context: colour, shape, position and nearby objects. " + _TRACE_FORMAT,
        "visual_document": "You read a document image or a query about documents. Describe the visible content in "
        "detail: title, headings, tables, figures and key numbers, then summarise it. " + _TRACE_FORMAT,
    }
}
# ecr-v2: ecr-v1 and a family for videos (ecr-v1's prompts unchanged, so its traces keep their meaning).
PROMPT_SETS["ecr-v2"] = {
    **PROMPT_SETS["ecr-v1"],
    "video": "You watch a video so that it can be matched to a query, a caption or a label. Describe the events in "
    "the order they happen: who or what moves, appears or disappears, and where. Then reason about what the "
    "instruction asks of the video. " + _TRACE_FORMAT,
}
TASK_FAMILIES = tuple(PROMPT_SETS["ecr-v2"])
DEFAULT_TASK_FAMILY = "retrieval"
VIDEO_TASK_FAMILY = "video"  # a video's default family where the prompt set has it
# How a backbone family lays out a video's tokens and positions: Qwen2-VL plain, Qwen2.5-VL with the seconds each
# temporal patch spans (`second_per_grid_ts`, its M-RoPE time axis), Qwen3-VL with a timestamp before each patch.
VIDEO_LAYOUTS = ("qwen2_vl", "qwen2_5_vl", "qwen3_vl")
_INPUT_KEYS = {"text", "image", "video", "instruction", "task", "think", "reasoning"}


@dataclass
class TTEInput:
    """One parsed input: text and/or an image or a video, with its instruction and task family."""

    text: str | None
    image: Image.Image | None
    instruction: str | None
    task: str
    think: bool | None = None  # per-input override of the thinking policy
    reasoning: str | list[int] | None = None  # a precomputed trace for this input: its text or token ids
    video: Video | None = None


# A fast tokenizer keeps its padding and truncation settings on its Rust backend, and every call sets them again
# (padded for a batch, unpadded for a trace), so two threads tokenising at once can pad with each other's settings.
# One lock for every tokenizer call of every processor: they take microseconds next to a forward.
_TOKENIZER_LOCK = threading.RLock()

MAX_ASPECT_RATIO = 200  # Qwen-VL's image processor refuses more, without naming the image


def _refuse_pixels(width: int, height: int, where: str, max_image_pixels: int) -> None:
    raise ValueError(
        f"{where}: image is {width}x{height} = {width * height} pixels, over max_image_pixels={max_image_pixels}; "
        "downscale it or raise max_image_pixels"
    )


def _check_pixels(image: Image.Image, where: str, max_image_pixels: int) -> None:
    width, height = image.size  # from the header: nothing is decoded yet for a freshly opened file
    if width * height > max_image_pixels:
        _refuse_pixels(width, height, where, max_image_pixels)
    ratio = max(width, height) / max(min(width, height), 1)
    if ratio > MAX_ASPECT_RATIO:
        raise ValueError(f"{where}: image is {width}x{height}, aspect ratio {ratio:.1f} over {MAX_ASPECT_RATIO}, "
                         "which the backbone's image processor refuses; crop or pad it")  # fmt: skip


def _header_size(data: bytes) -> tuple[int, int] | None:
    """A PNG's size from its IHDR chunk, read without PIL (which refuses huge headers with its own error)."""
    if data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR":
        return int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")
    return None


def to_rgb(image: Image.Image) -> Image.Image:
    """RGB as the backbone's own processor makes it: transparency composited onto white, 16-bit levels scaled."""
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        return Image.alpha_composite(Image.new("RGBA", rgba.size, (255, 255, 255, 255)), rgba).convert("RGB")
    if image.mode in ("I", "I;16", "I;16B", "I;16L"):  # 16-bit grey: convert("RGB") would clip it to white
        levels = np.asarray(image, dtype=np.float32) / 257.0
        return Image.fromarray(np.clip(np.round(levels), 0, 255).astype(np.uint8), mode="L").convert("RGB")
    return image.convert("RGB")


def _load_image_bytes(data: bytes, where: str, max_image_pixels: int) -> Image.Image:
    size = _header_size(data)
    if size is not None and size[0] * size[1] > max_image_pixels:
        _refuse_pixels(*size, where, max_image_pixels)
    try:
        image = Image.open(io.BytesIO(data))
    except Image.DecompressionBombError as error:  # a header PIL refuses outright: our error, naming the item
        raise ValueError(f"{where}: image is too large to decode ({error}); max_image_pixels={max_image_pixels}") \
            from None  # fmt: skip
    except (UnidentifiedImageError, OSError) as error:
        raise ValueError(f"{where}: not a readable image ({error})") from None
    _check_pixels(image, where, max_image_pixels)
    try:
        return to_rgb(image)
    except OSError as error:
        raise ValueError(f"{where}: image data is corrupt or truncated ({error})") from None


def _read_data_uri(uri: str, where: str) -> bytes:
    header, _, payload = uri.partition(",")
    if not header.endswith(";base64") or not payload:
        raise ValueError(f"{where}: data URI must be 'data:image/...;base64,<payload>', got {uri[:40]!r}...")
    try:
        return base64.b64decode(payload, validate=True)
    except binascii.Error as error:
        raise ValueError(f"{where}: data URI payload is not valid base64 ({error})") from None


@dataclass(frozen=True)
class URLFetchLimits:
    """Limits of the opt-in image-URL fetcher (`TTEProcessor.allow_urls`): a per-process setting, never saved.

    Args:
        max_bytes: largest body fetched; checked against `Content-Length` and again while the body streams in.
        deadline_s: for the whole fetch (connections, TLS, redirects and every read), not per read: a server that
            sends one byte a second is cut off when the deadline passes.
        max_redirects: redirects followed; each target is checked like the first URL.
        allowed_private_networks: non-public networks that may be fetched from anyway (e.g. `("10.1.0.0/16",)` for
            an intranet, `("127.0.0.1/32",)` in tests). Every other private, loopback, link-local or reserved
            destination is refused (SSRF: e.g. cloud metadata at 169.254.169.254).
    """

    max_bytes: int = 32 * 2**20
    deadline_s: float = 20.0
    max_redirects: int = 5
    allowed_private_networks: tuple[str, ...] = ()

    def __post_init__(self):
        if not isinstance(self.allowed_private_networks, (tuple, list)):
            raise TypeError(f"allowed_private_networks must be a tuple of networks such as '10.0.0.0/8', got "
                            f"{self.allowed_private_networks!r}")  # fmt: skip
        for network in self.allowed_private_networks:
            try:
                ipaddress.ip_network(network)
            except ValueError as error:
                raise ValueError(f"allowed_private_networks: {network!r} is not a network ({error})") from None
        if self.max_bytes < 1 or self.deadline_s <= 0 or self.max_redirects < 0:
            raise ValueError(f"URLFetchLimits needs max_bytes >= 1, deadline_s > 0 and max_redirects >= 0, got "
                             f"{self.max_bytes}, {self.deadline_s} and {self.max_redirects}")  # fmt: skip


REDIRECT_STATUSES = (301, 302, 303, 307, 308)


def _check_destination(host: str, port: int, where: str, target: str, limits: URLFetchLimits) -> str:
    """Resolve `host` and refuse a non-public address outside `allowed_private_networks`; returns the address to
    connect to, so that a second DNS answer cannot point elsewhere (DNS rebinding)."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as error:
        raise ValueError(f"{where}: could not fetch {target} (cannot resolve {host!r}: {error})") from None
    allowed = [ipaddress.ip_network(network) for network in limits.allowed_private_networks]
    addresses = [ipaddress.ip_address(info[4][0]) for info in infos]
    for address in addresses:
        address = getattr(address, "ipv4_mapped", None) or address  # ::ffff:127.0.0.1 is 127.0.0.1
        public = address.is_global and not address.is_multicast
        if not public and not any(address in network for network in allowed):
            raise ValueError(
                f"{where}: {target} resolves to {address}, a private, loopback, link-local or reserved address; "
                "refused unless URLFetchLimits.allowed_private_networks holds it"
            )
    return str(addresses[0])


class _Watchdog:
    """Shuts a socket down when a deadline passes, whatever read or write it is blocked in: a per-read timeout alone
    lets a server that drips one byte at a time hold a request for as long as it likes."""

    def __init__(self, sock: socket.socket, deadline: float):
        self.duplicate = sock.dup()  # shutting a duplicate shuts the socket; TLS wrapping detaches the original object
        self.timer = threading.Timer(max(deadline - time.monotonic(), 0.0), self._shut_down)
        self.timer.daemon = True
        self.timer.start()

    def _shut_down(self) -> None:
        try:
            self.duplicate.shutdown(socket.SHUT_RDWR)
        except OSError:  # already closed by the other side
            pass

    def cancel(self) -> None:
        self.timer.cancel()
        self.duplicate.close()


class _PinnedHTTPConnection(http.client.HTTPConnection):
    """An HTTP connection to an address checked beforehand (not to whatever the host name resolves to next), guarded
    by a watchdog from the moment it connects."""

    def __init__(self, host: str, port: int, address: str, deadline: float):
        super().__init__(host, port, timeout=max(deadline - time.monotonic(), 0.001))
        self.address, self.deadline, self.watchdog = address, deadline, None

    def connect(self):
        self.sock = socket.create_connection((self.address, self.port), self.timeout)
        self.watchdog = _Watchdog(self.sock, self.deadline)


class _PinnedHTTPSConnection(_PinnedHTTPConnection):
    default_port = 443  # so that the Host header leaves out the default port, as for any https URL

    def connect(self):
        super().connect()
        self.sock = ssl.create_default_context().wrap_socket(self.sock, server_hostname=self.host)  # verifies the host


def _read_capped(response: http.client.HTTPResponse, where: str, target: str, max_bytes: int) -> bytes:
    declared = response.getheader("Content-Length", "")
    if declared.isdigit() and int(declared) > max_bytes:
        raise ValueError(f"{where}: {target} is {int(declared)} bytes, over max_bytes={max_bytes}")
    body = bytearray()
    while chunk := response.read1(64 * 1024):  # at most one socket read: the cap is checked as the body arrives
        body += chunk
        if len(body) > max_bytes:
            raise ValueError(f"{where}: {target} sends more than max_bytes={max_bytes} bytes; refused")
    return bytes(body)


def _fetch_once(url: str, where: str, target: str, limits: URLFetchLimits, deadline: float) -> tuple[str, bytes | str]:
    """GET one URL; returns `("redirect", location)` or `("body", bytes)`."""
    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"{where}: {target}: only http and https URLs with a host are fetched")
    port = parts.port or (443 if parts.scheme == "https" else 80)
    address = _check_destination(parts.hostname, port, where, target, limits)
    connection_class = _PinnedHTTPSConnection if parts.scheme == "https" else _PinnedHTTPConnection
    connection = connection_class(parts.hostname, port, address, deadline)
    try:
        connection.request("GET", (parts.path or "/") + (f"?{parts.query}" if parts.query else ""),
                           headers={"Accept": "image/*"})  # fmt: skip
        with connection.getresponse() as response:
            if response.status in REDIRECT_STATUSES and response.getheader("Location"):
                return "redirect", urllib.parse.urljoin(url, response.getheader("Location"))
            if response.status != 200:
                raise ValueError(f"{where}: could not fetch {target} (HTTP {response.status} {response.reason})")
            return "body", _read_capped(response, where, target, limits.max_bytes)
    finally:
        connection.close()
        if connection.watchdog is not None:  # not at close(): http.client closes early and reads the body after
            connection.watchdog.cancel()


def _fetch_url(url: str, where: str, allow_urls: bool, limits: URLFetchLimits) -> bytes:
    """Fetch an http(s) URL within `limits`: scheme, destination, size and deadline are checked on every redirect.

    Raises:
        ValueError: naming `where` and the URL (and the redirect target that broke a rule).
    """
    if not allow_urls:
        raise ValueError(f"{where}: URL {url!r} given but URL fetching is off; pass allow_urls=True to fetch it")
    deadline = time.monotonic() + limits.deadline_s
    current = url
    try:
        for _ in range(limits.max_redirects + 1):
            target = f"URL {url!r}" + (f" (redirected to {current!r})" if current != url else "")
            kind, result = _fetch_once(current, where, target, limits, deadline)
            if time.monotonic() >= deadline:  # the guard cut the connection short; what came is incomplete
                raise TimeoutError
            if kind == "body":
                return result
            current = result
    except (OSError, http.client.HTTPException) as error:  # TimeoutError is an OSError
        if time.monotonic() >= deadline:
            raise ValueError(f"{where}: fetching URL {url!r} took longer than deadline_s={limits.deadline_s}") \
                from None  # fmt: skip
        raise ValueError(f"{where}: could not fetch {url!r} ({error})") from None
    raise ValueError(f"{where}: URL {url!r} redirects more than max_redirects={limits.max_redirects} times")


def looks_like_image_reference(value: str) -> bool:
    """Whether a bare string names an image (URL, data URI or file path) rather than being text.

    A string with white space is text ("a photo of cat.png") unless it is the path of an existing image file.
    """
    if value.startswith("data:image/"):
        return True
    if not value.lower().endswith(IMAGE_EXTENSIONS):
        return False
    return not any(char.isspace() for char in value) or os.path.isfile(value)


def load_image(
    value, where: str, allow_urls: bool = False, max_image_pixels: int = DEFAULT_MAX_IMAGE_PIXELS,
    url_limits: URLFetchLimits = URLFetchLimits(),
):  # fmt: skip
    """Load a PIL image, a local path, a `data:` URI, base64 string, raw bytes or (opted-in) http(s) URL as RGB.

    Raises:
        ValueError: missing file, unreadable or corrupt data, too many pixels, a URL without `allow_urls`, or a URL
            that breaks `url_limits`.
        TypeError: any other type.
    """
    if isinstance(value, Image.Image):
        _check_pixels(value, where, max_image_pixels)
        return to_rgb(value)
    if isinstance(value, (bytes, bytearray)):
        return _load_image_bytes(bytes(value), where, max_image_pixels)
    if not isinstance(value, str):
        raise TypeError(f"{where}: image must be a PIL image, path, data URI, URL or bytes, got {type(value).__name__}")
    if value.startswith("data:"):
        return _load_image_bytes(_read_data_uri(value, where), where, max_image_pixels)
    if value.startswith(("http://", "https://")):
        return _load_image_bytes(_fetch_url(value, where, allow_urls, url_limits), where, max_image_pixels)
    if not os.path.isfile(value):
        raise ValueError(f"{where}: image file {value!r} does not exist")
    with open(value, "rb") as handle:
        return _load_image_bytes(handle.read(), where, max_image_pixels)


class TTEProcessor(ProcessorMixin):
    r"""Builds reasoning prompts and embedding inputs for a TTE model.

    Wraps the backbone's tokenizer, image processor and chat template. transformers requires every sub-processor
    named in `__init__`, so a text-only backbone carries a Qwen-VL image processor too and sets `text_only=True`.

    Args:
        image_processor: the backbone's image processor (Qwen-VL family).
        tokenizer: the backbone's tokenizer, holding `EMBEDDING_TOKEN` as a special token.
        video_processor: the backbone's video processor (Qwen-VL family).
        chat_template: Jinja chat template of the backbone.
        max_pixels: resize budget per image (pixels); larger images are downscaled by the image processor.
        max_image_pixels: images with more pixels than this are refused before decoding.
        prompt_set_version: key of `PROMPT_SETS`.
        text_only: the backbone has no vision tower; image and video inputs are refused.
        num_frames, video_fps, max_frame_pixels, max_video_pixels: how a video becomes frames (`VideoSampling`): how
            many frames are kept (spread uniformly, or `video_fps` per second of a file, at most `num_frames`) and
            the pixel budgets per frame and per video. `max_frame_pixels=None` is the smaller of `max_pixels` and
            `VideoSampling`'s default: a frame never gets more pixels than an image (a vision tower trained on small
            images stays on sizes it knows). `embed(..., video_sampling=...)` overrides them per call.
        video_layout: the backbone family's video tokens (`VIDEO_LAYOUTS`), set by `training.init_model`.
        video_backend: the video file decoder, `"pyav"` or `"torchcodec"` (`video_tte`).

    URL fetching is a per-process choice of whoever runs the processor, never a saved setting: set
    `processor.allow_urls = True` (and, to change its limits or allow private networks, `processor.url_limits =
    URLFetchLimits(...)`) after loading. Neither is written by `save_pretrained`, and an `allow_urls` found in an
    older `processor_config.json` is ignored.
    """

    return_mm_token_type_ids = True

    def __init__(
        self,
        image_processor=None,
        tokenizer=None,
        video_processor=None,
        chat_template: str | None = None,
        max_pixels: int = DEFAULT_MAX_PIXELS,
        max_image_pixels: int = DEFAULT_MAX_IMAGE_PIXELS,
        prompt_set_version: str = "ecr-v1",
        text_only: bool = False,
        num_frames: int = VideoSampling.num_frames,
        video_fps: float | None = VideoSampling.fps,
        max_frame_pixels: int | None = None,
        max_video_pixels: int = VideoSampling.max_video_pixels,
        video_layout: str = "qwen2_vl",
        video_backend: str = VideoSampling.backend,
        **kwargs,
    ):
        if prompt_set_version not in PROMPT_SETS:
            raise ValueError(f"prompt_set_version={prompt_set_version!r} is not one of {sorted(PROMPT_SETS)}")
        if EMBEDDING_TOKEN not in tokenizer.get_vocab():
            raise ValueError(f"tokenizer lacks the embedding token {EMBEDDING_TOKEN!r}; add it as a special token")
        self.max_pixels = max_pixels
        self.max_image_pixels = max_image_pixels
        self.num_frames, self.video_fps = num_frames, video_fps
        self.max_frame_pixels, self.max_video_pixels = max_frame_pixels, max_video_pixels
        self.video_backend = video_backend
        self.video_sampling  # checks the settings now rather than at the first video
        if video_layout not in VIDEO_LAYOUTS:
            raise ValueError(f"video_layout={video_layout!r} is not one of {VIDEO_LAYOUTS}")
        self.video_layout = video_layout
        self.vision_start_token, self.vision_end_token = "<|vision_start|>", "<|vision_end|>"
        self.prompt_set_version = prompt_set_version
        if kwargs.pop("allow_urls", False):  # written by older versions; a saved file must not turn fetching on
            logger.warning("ignoring allow_urls=True from the processor's settings: URL fetching is a per-process "
                           "choice; set processor.allow_urls = True after loading")  # fmt: skip
        self.allow_urls = False  # not an __init__ argument, so save_pretrained never writes it
        self._shared_prefixes: dict[str, list[int]] = {}
        self._reserved_ids_cache: tuple[tuple[int, int], frozenset[int]] | None = None
        self.url_limits = URLFetchLimits()
        self.text_only = text_only
        self.image_token = getattr(tokenizer, "image_token", None) or "<|image_pad|>"
        self.image_token_id = None if text_only else tokenizer.convert_tokens_to_ids(self.image_token)
        self.video_token = getattr(tokenizer, "video_token", None) or "<|video_pad|>"
        self.video_token_id = None if text_only else tokenizer.convert_tokens_to_ids(self.video_token)
        super().__init__(image_processor, tokenizer, video_processor, chat_template=chat_template, **kwargs)

    @property
    def video_sampling(self) -> VideoSampling:
        """The saved video settings (`num_frames`, `video_fps`, `max_frame_pixels`, `max_video_pixels`,
        `video_backend`)."""
        frame_pixels = self.max_frame_pixels or min(self.max_pixels, VideoSampling.max_frame_pixels)
        return VideoSampling(num_frames=self.num_frames, fps=self.video_fps, max_frame_pixels=frame_pixels,
                             max_video_pixels=self.max_video_pixels, backend=self.video_backend)  # fmt: skip

    def sampling_for_call(self, video_sampling: VideoSampling | dict | None) -> VideoSampling:
        """`video_sampling` as given to one call: a `VideoSampling`, a dict of the fields that differ from the saved
        settings, or None for the saved settings."""
        if isinstance(video_sampling, VideoSampling):
            return video_sampling
        if video_sampling is not None and not isinstance(video_sampling, dict):
            raise TypeError(f"video_sampling must be a VideoSampling, a dict or None, got "
                            f"{type(video_sampling).__name__}")  # fmt: skip
        saved = self.video_sampling
        if not video_sampling:
            return saved
        unknown = set(video_sampling) - set(saved.to_dict())
        if unknown:
            raise ValueError(f"video_sampling: unknown settings {sorted(unknown)}; allowed are "
                             f"{sorted(saved.to_dict())}")  # fmt: skip
        return VideoSampling(**{**saved.to_dict(), **video_sampling})

    @property
    def task_families(self) -> tuple[str, ...]:
        """The task families of this processor's prompt set."""
        return tuple(PROMPT_SETS[self.prompt_set_version])

    @property
    def embedding_token_id(self) -> int:
        return self.tokenizer.convert_tokens_to_ids(EMBEDDING_TOKEN)

    @property
    def forbidden_text_tokens(self) -> list[str]:
        """Special tokens that no text, instruction or trace may contain, as strings.

        The tokenizer turns them into control ids wherever they appear: a text holding `<|im_start|>` would add turns
        to the reasoning prompt, and EOS or the pad token would end or hide a trace. These are the template's own
        tokens and every special token of the tokenizer (`all_special_tokens` and added tokens marked special),
        except the trace markers `<think>` / `</think>`, which the ECR prompts and traces contain by design.
        """
        added = [token.content for token in self.tokenizer.added_tokens_decoder.values() if token.special]
        tokens = [EMBEDDING_TOKEN, self.image_token, self.video_token, "<|vision_start|>", "<|vision_end|>",
                  *self.tokenizer.all_special_tokens, *added]  # fmt: skip
        return list(dict.fromkeys(token for token in tokens if token not in (THINK_START, THINK_END)))

    def replace_image_token(self, image_inputs: dict, image_idx: int, **kwargs) -> str:
        # Qwen-VL: one placeholder per merged patch group.
        merge_length = self.image_processor.merge_size**2
        num_image_tokens = image_inputs["image_grid_thw"][image_idx].prod() // merge_length
        return self.image_token * int(num_image_tokens)

    def replace_video_token(self, video_inputs: dict, video_idx: int, **kwargs) -> str:
        if self.video_layout == "qwen3_vl":  # each temporal patch after its timestamp, as Qwen3-VL's processor writes
            return Qwen3VLProcessor.replace_video_token(self, video_inputs, video_idx, **kwargs)
        # Qwen2-VL / Qwen2.5-VL: one placeholder per merged patch group of each temporal patch.
        merge_length = self.video_processor.merge_size**2
        return self.video_token * int(video_inputs["video_grid_thw"][video_idx].prod() // merge_length)

    _calculate_timestamps = Qwen3VLProcessor._calculate_timestamps  # what its replace_video_token calls

    # ----- inputs -----

    def _check_reserved(self, value: str, where: str, kind: str) -> str:
        # Refused rather than escaped: the prompt is one string in which the template's own special tokens must stay
        # special, so a user's copy of one could not be told apart from them.
        for token in self.forbidden_text_tokens:
            if token in value:
                raise ValueError(f"{where}: {kind} contains the reserved token {token!r}; special tokens of the "
                                 "tokenizer may not appear in texts, instructions or traces")  # fmt: skip
        return value

    def _check_text(self, value, where: str) -> str:
        if not isinstance(value, str):
            raise TypeError(f"{where}: text must be a str, got {type(value).__name__}")
        if not value.strip():
            raise ValueError(f"{where}: text is empty")
        return self._check_reserved(value, where, "text")

    def _parse_dict(self, item: dict, where: str, instruction: str | None, task: str | None,
                    sampling: VideoSampling) -> TTEInput:  # fmt: skip
        unknown = set(item) - _INPUT_KEYS
        if unknown:
            raise ValueError(f"{where}: unknown keys {sorted(unknown)}; allowed keys are {sorted(_INPUT_KEYS)}")
        if item.get("text") is None and item.get("image") is None and item.get("video") is None:
            raise ValueError(f"{where}: a dict input needs 'text', 'image' or 'video'")
        if item.get("image") is not None and item.get("video") is not None:
            raise ValueError(f"{where}: give an image or a video, not both")
        text = self._check_text(item["text"], f"{where}['text']") if item.get("text") is not None else None
        image = video = None
        if item.get("image") is not None:
            if self.text_only:
                raise ValueError(f"{where}: this model is text-only and cannot embed images")
            image = self._load_image(item["image"], f"{where}['image']")
        if item.get("video") is not None:
            if self.text_only:
                raise ValueError(f"{where}: this model is text-only and cannot embed videos")
            video = self._load_video(item["video"], f"{where}['video']", sampling)
        if task is None:  # a video reasons with the video family's prompt where the prompt set has one
            in_set = video is not None and VIDEO_TASK_FAMILY in PROMPT_SETS[self.prompt_set_version]
            task = VIDEO_TASK_FAMILY if in_set else DEFAULT_TASK_FAMILY
        item_instruction = instruction
        if item.get("instruction") is not None:
            item_instruction = self._check_text(item["instruction"], f"{where}['instruction']")
        think = item.get("think")
        if think is not None and not isinstance(think, bool):
            raise TypeError(f"{where}['think']: must be a bool, got {type(think).__name__}")
        reasoning = item.get("reasoning")
        if reasoning is not None:
            reasoning = self.check_trace(reasoning, f"{where}['reasoning']")
        if "task" in item:
            task = self._check_task(item["task"], where)
        return TTEInput(text, image, item_instruction, task, think, reasoning, video)

    def _load_image(self, value, where: str) -> Image.Image:
        return load_image(value, where, self.allow_urls, self.max_image_pixels, self.url_limits)

    def _load_video(self, value, where: str, sampling: VideoSampling) -> Video:
        if isinstance(value, str) and value.startswith("data:"):
            value = _read_data_uri(value, where)
        return load_video(value, where, sampling, self._load_image, self.max_image_pixels)

    def _check_task(self, task: str, where: str) -> str:
        if not isinstance(task, str):
            raise TypeError(f"{where}: task must be a str, got {type(task).__name__}")
        if task not in PROMPT_SETS[self.prompt_set_version]:
            raise ValueError(f"{where}: task={task!r} is not one of {self.task_families} (prompt set "
                             f"{self.prompt_set_version})")  # fmt: skip
        return task

    def parse_input(self, item, index: int, instruction: str | None = None, task: str | None = None,
                    video_sampling: VideoSampling | dict | None = None) -> TTEInput:  # fmt: skip
        """Parse one input: a str (text, or an image or video file path / URL / data URI), a PIL image, bytes (an
        image) or a dict with keys `text`, `image`, `video` (a list of frames, a folder of frames, a video file or its
        bytes), `instruction`, `task`, `think`, `reasoning` (a precomputed trace)."""
        where = f"inputs[{index}]"
        sampling = self.sampling_for_call(video_sampling)
        if item is None:
            raise ValueError(f"{where}: input is None")
        if isinstance(item, dict):
            return self._parse_dict(item, where, instruction, task, sampling)
        if isinstance(item, str) and looks_like_video_file(item):
            return self._parse_dict({"video": item}, where, instruction, task, sampling)
        if isinstance(item, str) and not looks_like_image_reference(item):
            return self._parse_dict({"text": item}, where, instruction, task, sampling)
        if isinstance(item, (str, bytes, bytearray, Image.Image)):
            return self._parse_dict({"image": item}, where, instruction, task, sampling)
        raise TypeError(
            f"{where}: expected str, PIL image, bytes or dict with 'text'/'image'/'video', got {type(item).__name__}"
        )

    def parse_inputs(self, inputs, instruction: str | None = None, task: str | None = None,
                     video_sampling: VideoSampling | dict | None = None) -> list[TTEInput]:  # fmt: skip
        """Parse a batch (or one input) into `TTEInput`s, naming the offending item on bad input. `video_sampling`
        overrides the saved video settings for this call (`sampling_for_call`)."""
        if isinstance(inputs, (str, dict, bytes, bytearray, Image.Image)):
            inputs = [inputs]
        if not isinstance(inputs, (list, tuple)):
            raise TypeError(f"inputs must be a list of inputs or one input, got {type(inputs).__name__}")
        if len(inputs) == 0:
            raise ValueError("inputs is empty; pass at least one input")
        if instruction is not None:
            self._check_text(instruction, "instruction")
        if task is not None:
            self._check_task(task, "task")
        sampling = self.sampling_for_call(video_sampling)
        return [self.parse_input(item, i, instruction, task, sampling) for i, item in enumerate(inputs)]

    # ----- prompts -----

    def build_messages(self, item: TTEInput) -> list[dict]:
        """The reasoning conversation of one input (OpenAI-style content parts)."""
        user_text = "\n".join(part for part in (item.instruction, item.text) if part)
        content = ([{"type": "image"}] if item.image is not None else []) + (
            [{"type": "video"}] if item.video is not None else []) + (
            [{"type": "text", "text": user_text}] if user_text else []
        )
        system = PROMPT_SETS[self.prompt_set_version][item.task]
        return [{"role": "system", "content": system}, {"role": "user", "content": content}]

    def build_prompt(self, item: TTEInput) -> str:
        """The reasoning prompt of one input; it is also the prefix of its embedding input."""
        messages = self.build_messages(item)
        if self.text_only:  # text-only chat templates take plain string content
            messages[1]["content"] = "\n".join(part["text"] for part in messages[1]["content"])
        return self.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)

    def shared_prefix_ids(self, task: str) -> list[int]:
        """The token ids every prompt of task family `task` starts with: the template's system turn and markup, up to
        the first token that depends on the input (what `TTEModel` computes once and caches).

        Found by tokenising probe inputs that differ from their first character on (text, instruction, image), so it
        follows the chat template instead of assuming its layout.
        """
        if task not in self._shared_prefixes:
            probes = [TTEInput(text="a", image=None, instruction=None, task=task),
                      TTEInput(text="7", image=None, instruction="b", task=task)]  # fmt: skip
            if not self.text_only:
                probes.append(TTEInput(text=None, image=Image.new("RGB", (1, 1)), instruction=None, task=task))
            with _TOKENIZER_LOCK:
                rows = [self.tokenizer(self.build_prompt(probe), add_special_tokens=False)["input_ids"]
                        for probe in probes]  # fmt: skip
            length = 0
            while length < min(map(len, rows)) and len({row[length] for row in rows}) == 1:
                length += 1
            self._shared_prefixes[task] = rows[0][:length]
        return list(self._shared_prefixes[task])

    def check_trace(self, trace, where: str) -> str | list[int]:
        """Validate a trace (`where` names it in errors, e.g. `"reasoning[2]"`): a str without special tokens, or a
        list of token ids (as `embed(..., return_reasoning="ids")` returns them) without reserved ids."""
        if isinstance(trace, (list, tuple)):
            return self._check_trace_ids(trace, where)
        if not isinstance(trace, str):
            raise TypeError(f"{where}: trace must be a str or a list of token ids, got {type(trace).__name__}")
        return self._check_reserved(trace, where, "trace")

    def _check_trace_ids(self, ids, where: str) -> list[int]:
        vocabulary = len(self.tokenizer)
        reserved = self._reserved_trace_ids()
        for j, token in enumerate(ids):
            if isinstance(token, bool) or not isinstance(token, (int, np.integer)):
                raise TypeError(f"{where}[{j}]: a trace's token ids must be ints, got {type(token).__name__}")
            if not 0 <= token < vocabulary:
                raise ValueError(f"{where}[{j}]: token id {token} is outside the vocabulary (0..{vocabulary - 1})")
            if token in reserved:
                raise ValueError(f"{where}[{j}]: token id {token} is the reserved token "
                                 f"{self.tokenizer.convert_ids_to_tokens(int(token))!r}, which no trace may contain")  # fmt: skip
        return [int(token) for token in ids]

    def _reserved_trace_ids(self) -> frozenset[int]:
        """The ids of `forbidden_text_tokens`, computed once per vocabulary (adding tokens to the tokenizer changes its
        size, and so the key). The unknown token is what tokenising an unknown word gives, not a control id: a text's
        ids may hold it."""
        key = (len(self.tokenizer), len(self.tokenizer.added_tokens_decoder))
        if self._reserved_ids_cache is None or self._reserved_ids_cache[0] != key:
            ids = set(self.tokenizer.convert_tokens_to_ids(self.forbidden_text_tokens)) - {self.tokenizer.unk_token_id}
            self._reserved_ids_cache = (key, frozenset(ids))
        return self._reserved_ids_cache[1]

    def trace_token_ids(self, trace, where: str) -> list[int]:
        """The ids a trace is fed as: token ids as given (a generated trace is the ids that were generated), a text
        tokenised on its own, as a reasoner generates it after the prompt."""
        trace = self.check_trace(trace, where)
        if isinstance(trace, list):
            return trace
        with _TOKENIZER_LOCK:
            return self.tokenizer(trace, add_special_tokens=False)["input_ids"]

    def _encode(self, texts: list[str], items: list[TTEInput]) -> BatchFeature:
        images = [item.image for item in items if item.image is not None]
        videos = [item.video for item in items if item.video is not None]
        kwargs = {"padding": True, "padding_side": "left", "return_tensors": "pt", "add_special_tokens": False,
                  "return_mm_token_type_ids": not self.text_only}  # fmt: skip
        if images:
            kwargs.update(images=images, images_kwargs={"size": self._image_size()})
        metadata = [self._video_metadata(video) for video in videos]
        if videos:  # sampled and fitted to the budgets already (`video_tte.load_video`): processed as they are
            kwargs.update(videos=[video.frames for video in videos], videos_kwargs={
                # our budgets are per frame and per video already: its own per-frame cap would only warn
                "size": self._video_size(videos), "do_sample_frames": False, "cap_pixels_per_frame": False,
                "return_metadata": True, "video_metadata": metadata})  # fmt: skip
        with _TOKENIZER_LOCK:
            features = self(text=texts, **kwargs)
        if videos and self.video_layout == "qwen2_5_vl":  # the seconds each temporal patch spans, as its processor
            step = self.video_processor.temporal_patch_size
            features["second_per_grid_ts"] = torch.tensor([step / data.sampled_fps for data in metadata])
        features.pop("video_metadata", None)
        return features

    @staticmethod
    def _video_size(videos: list[Video]) -> dict:
        """The video processor's resize bounds: the frames already fit their budget, so it only rounds them to whole
        patch groups within it (Qwen-VL's `smart_resize`), never up to its own, larger default minimum."""
        return {"shortest_edge": PATCH_PIXELS, "longest_edge": max(video.frame_pixels for video in videos)}

    @staticmethod
    def _video_metadata(video: Video) -> VideoMetadata:
        width, height = video.frames[0].size
        duration = video.source_frames / video.source_fps if video.source_fps else None
        return VideoMetadata(total_num_frames=video.source_frames, fps=video.source_fps, width=width, height=height,
                             duration=duration, frames_indices=list(video.indices))  # fmt: skip

    def _image_size(self) -> dict:
        return {"shortest_edge": self.image_processor.size.shortest_edge, "longest_edge": self.max_pixels}

    def reasoning_settings(self) -> dict:
        """What the processor adds to a trace beyond the input itself: the prompt set, the chat template and the image
        resizing. Part of a trace cache key (`trace_cache_tte.trace_key`)."""
        template = hashlib.sha256((self.chat_template or "").encode("utf-8")).hexdigest()
        settings = {"prompt_set_version": self.prompt_set_version, "chat_template": template}
        if not self.text_only:
            settings["image_size"] = self._image_size()
        return settings

    def build_image_inputs(self, items: list[TTEInput]) -> BatchFeature:
        """The vision-tower inputs alone (`pixel_values`, `image_grid_thw`) of the items' images, in item order."""
        images = [item.image for item in items if item.image is not None]
        if len(images) != len(items):
            raise ValueError(f"{len(items) - len(images)} of {len(items)} items have no image")
        return self.image_processor(images=images, size=self._image_size(), return_tensors="pt")

    def build_reasoning_inputs(self, items: list[TTEInput], with_prefix_lengths: bool = False) -> BatchFeature:
        """Left-padded model inputs of the reasoning prompts (and `prefix_lengths` if asked, for `TTEModel`, which
        takes it out before `generate`)."""
        features = self._encode([self.build_prompt(item) for item in items], items)
        return self._with_prefix_lengths(features, items) if with_prefix_lengths else features

    def build_embedding_inputs(self, items: list[TTEInput], traces: list[str | list[int]]) -> BatchFeature:
        """Left-padded model inputs of the reasoning prompt, the trace and EMBEDDING_TOKEN; use `""` for no trace.

        A trace is fed as its token ids (`trace_token_ids`): a generated trace as the ids that were generated, so the
        embedding input continues the generation exactly, and a given text tokenised on its own. `prefix_lengths`
        (`_with_prefix_lengths`) lets the model run each family's shared prefix once.
        """
        if len(traces) != len(items):
            raise ValueError(f"got {len(traces)} traces for {len(items)} inputs")
        return self.build_embedding_inputs_of_ids(
            items, [self.trace_token_ids(trace, f"reasoning[{i}]") for i, trace in enumerate(traces)]
        )

    def build_embedding_inputs_of_ids(self, items: list[TTEInput], trace_ids: list[list[int]]) -> BatchFeature:
        """`build_embedding_inputs` for traces that `trace_token_ids` (or `check_trace`) already took as checked ids:
        they are not checked again."""
        tails = [ids + [self.embedding_token_id] for ids in trace_ids]
        return self._after_prompts(items, tails, labelled=False)

    def _with_prefix_lengths(self, features: BatchFeature, items: list[TTEInput]) -> BatchFeature:
        """Add `prefix_lengths`: how many of each row's first tokens are its family's `shared_prefix_ids` (0 for a
        row whose text merged with the template's last token)."""
        lengths = []
        for ids, mask, item in zip(features["input_ids"], features["attention_mask"], items):
            prefix = self.shared_prefix_ids(item.task)
            lengths.append(len(prefix) if ids[mask.bool()][: len(prefix)].tolist() == prefix else 0)
        features["prefix_lengths"] = torch.tensor(lengths)
        return features

    def build_sft_inputs(self, items: list[TTEInput], traces: list[str]) -> BatchFeature:
        """Reasoner-SFT inputs: the reasoning prompt, then the trace and EOS as the only labels (-100 elsewhere).

        The trace is tokenised on its own (`trace_token_ids`), as generation produces it after the prompt ids.

        Returns:
            The reasoning-prompt features with `input_ids`, `attention_mask`, `labels` (and `mm_token_type_ids`) of
            shape `(batch, max(prompt + trace + 1))`, left-padded, and `prefix_lengths`; the vision inputs are
            unchanged.
        """
        if len(traces) != len(items):
            raise ValueError(f"got {len(traces)} traces for {len(items)} inputs")
        tails = [self.trace_token_ids(trace, f"reasoning[{i}]") + [self.tokenizer.eos_token_id]
                 for i, trace in enumerate(traces)]  # fmt: skip
        return self._after_prompts(items, tails, labelled=True)

    def _after_prompts(self, items: list[TTEInput], tails: list[list[int]], labelled: bool) -> BatchFeature:
        """Each item's reasoning-prompt ids followed by `tails[i]` (text tokens), left-padded, with `prefix_lengths`,
        and with the tails as the only `labels` when `labelled`; the vision inputs are the prompts'."""
        prompts = self.build_reasoning_inputs(items)
        mask = prompts["attention_mask"].bool()
        prompt_rows = [prompts["input_ids"][i][mask[i]].tolist() for i in range(len(items))]
        width = max(len(prompt) + len(tail) for prompt, tail in zip(prompt_rows, tails))
        features = {
            "input_ids": torch.full((len(items), width), self.tokenizer.pad_token_id, dtype=torch.long),
            "attention_mask": torch.zeros((len(items), width), dtype=torch.long),
        }
        if labelled:
            features["labels"] = torch.full((len(items), width), -100, dtype=torch.long)
        if "mm_token_type_ids" in prompts:
            features["mm_token_type_ids"] = torch.zeros((len(items), width), dtype=torch.long)  # tails: text
        for i, (prompt, tail) in enumerate(zip(prompt_rows, tails)):
            start, tail_start = width - len(prompt) - len(tail), width - len(tail)
            features["input_ids"][i, start:] = torch.tensor(prompt + tail)
            features["attention_mask"][i, start:] = 1
            if labelled:
                features["labels"][i, tail_start:] = torch.tensor(tail)
            if "mm_token_type_ids" in prompts:
                features["mm_token_type_ids"][i, start:tail_start] = prompts["mm_token_type_ids"][i][mask[i]]
        return self._with_prefix_lengths(BatchFeature({**prompts, **features}), items)

    def decode_trace(self, token_ids: list[int]) -> str:
        """Text of generated trace tokens (special tokens such as `<think>` are kept)."""
        return self.tokenizer.decode(token_ids, skip_special_tokens=False)


__all__ = ["TTEProcessor", "TTEInput", "PROMPT_SETS", "EMBEDDING_TOKEN", "URLFetchLimits", "load_image"]
