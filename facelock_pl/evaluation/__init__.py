"""Evaluation harness: edit clean and protected images, score them with the paper's metrics, report."""

from .edit import run_edit
from .editors import Editor, EditorSpec
from .evaluate import run_evaluate
from .metrics import ClipSpec
from .sets import DataSpec

__all__ = ["ClipSpec", "DataSpec", "Editor", "EditorSpec", "run_edit", "run_evaluate"]
