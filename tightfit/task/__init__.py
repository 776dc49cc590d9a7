"""The user's task: the model (a callable, a Hugging Face folder, a timm or torchvision
architecture), the data (arrays or loaders) and the metric, loaded and checked at the boundary."""

from tightfit.task._calls import EXAMPLES, resolve_callable
from tightfit.task._data import TaskData, is_token_input, load_data
from tightfit.task._metrics import METRICS, BuiltinMetric, Metric, perplexity, top1_accuracy
from tightfit.task._models import HuggingFaceModel, load_model, model_id

__all__ = [
    "EXAMPLES",
    "METRICS",
    "BuiltinMetric",
    "HuggingFaceModel",
    "Metric",
    "TaskData",
    "is_token_input",
    "load_data",
    "load_model",
    "model_id",
    "perplexity",
    "resolve_callable",
    "top1_accuracy",
]
