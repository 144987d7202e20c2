"""Which models can be batched at all, and the exception that sends the others to the
sequential loop."""

from __future__ import annotations

from torch import nn

# The BatchNorm layers the ensemble replaces by masked ones (`batch_norm`); subclasses
# with a forward of their own would be replaced silently, so they are refused.
BATCH_NORM_LAYERS: tuple[type[nn.Module], ...] = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)


FP16_MIXED_REASON = (
    "the recipe trains in float16 mixed precision, whose loss scaler skips a model's step "
    "on overflow, and the batched optimizer steps groups of models together"
)


class BatchingUnsupported(Exception):
    """The model cannot be trained as a batched ensemble; the caller trains it
    sequentially instead and logs ``reason``."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def batching_problem(model: nn.Module) -> str | None:
    """Why ``model`` cannot be batched, or None when it can.

    Checked up front so the caller can fall back without training anything; a forward
    that fails under ``vmap`` is still caught at the first step of `train_batched`.
    """
    for name, module in model.named_modules():
        label = name or type(model).__name__
        if isinstance(module, nn.modules.batchnorm._BatchNorm) and (
            type(module) not in BATCH_NORM_LAYERS
        ):
            return (
                f"{label} ({type(module).__name__}) is a BatchNorm subclass: the ensemble "
                "computes BatchNorm1d/2d/3d with masked batch statistics and cannot know "
                "what its own forward does."
            )
        if isinstance(module, nn.modules.instancenorm._InstanceNorm) and (
            module.track_running_stats
        ):
            return (
                f"{label} ({type(module).__name__}) tracks running statistics: it updates "
                "buffers in the forward pass."
            )
        if isinstance(module, nn.modules.lazy.LazyModuleMixin):
            return f"{label} ({type(module).__name__}) is a lazy module (uninitialised shapes)."
    trainable = [p for p in model.parameters() if p.requires_grad]
    if not trainable:
        return "the model has no trainable parameters."
    kinds = sorted({f"{p.dtype} on {p.device}" for p in trainable})
    if len(kinds) > 1:
        return f"its trainable parameters mix dtypes or devices ({', '.join(kinds)})."
    return None


def _has_hooks(module: nn.Module) -> bool:
    return any(
        getattr(module, name, None)
        for name in (
            "_forward_hooks", "_forward_pre_hooks", "_backward_hooks", "_backward_pre_hooks"
        )
    )  # fmt: skip


def _global_hooks() -> bool:
    from torch.nn.modules import module as module_globals

    return any(
        getattr(module_globals, name, None)
        for name in (
            "_global_forward_hooks", "_global_forward_pre_hooks", "_global_backward_hooks",
            "_global_backward_pre_hooks",
        )
    )  # fmt: skip
