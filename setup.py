"""Install the TTE package for development: `pip install -e ".[test]"`.

The Hub files live flat at the repository root (as Hub custom code must); `tte/__init__.py` points the package
`tte` at them, which is why the install is editable.
"""

from setuptools import setup


setup(
    name="think-then-embed",
    version="0.1.0",
    description="Think-Then-Embed: reasoning-conditioned multimodal embeddings (Hugging Face Hub custom code)",
    python_requires=">=3.10",
    packages=["tte", "training", "training.recipes", "tte_eval"],
    py_modules=["tte_cli"],
    install_requires=[
        "torch>=2.6",
        "torchvision",
        "transformers>=5.24,<6",
        "sentence-transformers>=6.2,<7",
        "huggingface-hub>=1.3",
        "safetensors",
        "pillow",
        "numpy",
        "pyyaml",
        "tqdm",
    ],
    extras_require={
        "train": ["accelerate>=1.10", "peft>=0.17", "datasets>=4", "matplotlib>=3.8,<4"],
        # video files and data:video URIs (frame lists and folders need only Pillow); torchcodec, the optional
        # faster decoder, also needs FFmpeg's libraries (Debian: ffmpeg)
        "video": ["av>=14", "torchcodec==0.17.0"],
        # the demo Space (space/requirements.txt pins gradio for the Hub) and its browser test
        "space": ["gradio==6.31.0", "pandas", "selenium==4.48.0"],
        "test": ["pytest>=8", "accelerate>=1.10", "peft>=0.17", "datasets>=4", "matplotlib>=3.8,<4",
                 "gradio==6.31.0", "pandas", "selenium==4.48.0", "av>=14", "torchcodec==0.17.0"],
    },
    entry_points={"console_scripts": ["tte=tte_cli:main", "tte-eval=tte_eval.cli:main"]},
)
