"""Built-in tasks, and the base class that user tasks can reuse."""

from trials.tasks._classification import ClassificationTask

__all__ = ["ClassificationTask"]
