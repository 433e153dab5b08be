"""Where the published reference scores live, and the golden aggregate row of harness doc §7."""

import os

import pytest


REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
# CI runs on a clean clone with shared/ beside the repository.
GOLDEN_FILE = os.path.join(REPO_ROOT, "..", "shared", "data", "mmeb-scores", "VLM2Vec-V2.0-Qwen2VL-2B.json")
# harness doc §7: computed from the published per-task scores of VLM2Vec-V2.0-Qwen2VL-2B (v2.0.1).
GOLDEN_ROW = {
    "I-CLS": 62.93, "I-QA": 56.42, "I-RET": 69.60, "I-VG": 77.12, "Image": 64.92,
    "V-CLS": 39.24, "V-QA": 34.66, "V-RET": 28.38, "V-MRET": 37.55, "Video": 34.67,
    "VDRv1": 74.39, "VDRv2": 44.61, "VisRAG": 79.33, "VD-OOD": 38.99, "VisDoc": 64.76,
    "All-78": 57.89, "V1 IND": 68.82, "V1 OOD": 60.05,
}  # fmt: skip
needs_golden = pytest.mark.skipif(
    not os.path.isfile(GOLDEN_FILE), reason=f"golden score file not found at {GOLDEN_FILE} (shared/ beside the repo)"
)
