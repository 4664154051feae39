"""`LoraLinear`: a frozen base linear plus a trainable low-rank update.

y = base(x) + scale * B(A(dropout(x)))          dropout_position "pre"
y = base(x) + dropout(scale * B(A(x)))          dropout_position "post"

A and B are `nn.Linear` submodules (`lora_A`, `lora_B`) so that tensor-parallel styles and
state-dict names work on them like on any linear layer, and backends may swap them for
subclasses that communicate (Megatron). The base may be a Megatron parallel linear whose forward
returns `(output, bias)`; the update is added to the output.

DoRA (`spec.use_dora`, PEFT's maths): a trainable magnitude m [out] rescales each output row of
W' = W + scale * B A to norm m: y = (m / ||W'||_row) * (x W'^T) + bias, the norm treated as a
constant in backward (DoRA paper 4.3). It always takes the generic torch path.

PiSSA / OLoRA (`spec.weight_init`, see `residual_init`): A and B start from the base weight and
the base weight is rewritten to the residual W - scale * B0 A0. The init factors are kept as
(non-persistent) buffers so that the disabled layer (the reference policy) still computes the
original model: base(x) + scale * B0 A0 x.

Three compute paths, numerically the same:
- fused torch (`_FusedLoraLinear`): a plain `nn.Linear` base with plain tensors, no hooks, one
  dtype. The adapter's contributions are accumulated into the base matmuls' outputs (`addmm_`)
  instead of materialising and adding [tokens, out] / [tokens, in] tensors.
- generic torch: any other base (parallel linears, TP-styled modules, autocast, dtype casts).
- Triton (`triton_kernel.fused_lora`) for the adapter branch, on CUDA when asked for.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from lora_rl.errors import SetupError
from lora_rl.lora.init import init_weight
from lora_rl.lora.residual_init import residual_init
from lora_rl.lora.spec import LoraSpec

_PLAIN = (torch.Tensor, nn.Parameter)


def _packed(weight: torch.Tensor) -> bool:
    """A bitsandbytes-quantized weight: int8 / uint8 data, or 4-bit blocks in a float
    `bnb_4bit_quant_storage` (recognised by their quant_state)."""
    return not weight.is_floating_point() or getattr(weight, "quant_state", None) is not None


def _features(base: nn.Module) -> tuple[int, int]:
    # Megatron parallel linears keep [out_per_rank, in_per_rank] like nn.Linear.
    weight = base.weight
    if _packed(weight) and hasattr(base, "in_features"):
        # A quantized base (bitsandbytes 4-bit packs its weight as [n / 2, 1] bytes, in uint8 or
        # in a float `bnb_4bit_quant_storage`): the module's own sizes.
        return int(base.in_features), int(base.out_features)
    return int(weight.shape[1]), int(weight.shape[0])


def _hooked(module: nn.Module) -> bool:
    return bool(module._forward_hooks or module._forward_pre_hooks or module._backward_hooks
                or module._backward_pre_hooks)


def _global_hooks() -> bool:
    from torch.nn.modules import module as module_mod

    return bool(module_mod._global_forward_hooks or module_mod._global_forward_pre_hooks
                or module_mod._global_backward_hooks or module_mod._global_backward_pre_hooks)


class _FusedLoraLinear(torch.autograd.Function):
    """y = x W^T + bias + scale * (h A^T) B^T, h = dropout(x) (None: h is x).

    The base weight is frozen, so its gradient is computed only if something asks for it."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, h: torch.Tensor | None, weight: torch.Tensor,
                bias: torch.Tensor | None, a: torch.Tensor, b: torch.Tensor,
                scale: float) -> torch.Tensor:
        x2 = x.reshape(-1, x.shape[-1])
        h2 = x2 if h is None else h.reshape(-1, h.shape[-1])
        # Scaling the [tokens, rank] intermediate is cheaper than the [tokens, out] output.
        mid = torch.mm(h2, a.t()).mul_(scale)
        y = torch.mm(x2, weight.t()) if bias is None else torch.addmm(bias, x2, weight.t())
        y.addmm_(mid, b.t())
        ctx.scale = scale
        ctx.separate_h = h is not None
        ctx.has_bias = bias is not None
        ctx.x_shape = x.shape
        ctx.save_for_backward(x2 if ctx.needs_input_grad[2] else None, h2, mid, weight, a, b)
        return y.reshape(*x.shape[:-1], y.shape[-1])

    @staticmethod
    def backward(ctx: Any, dy: torch.Tensor):
        x2, h2, mid, weight, a, b = ctx.saved_tensors
        need_x, need_h, need_w, need_bias, need_a, need_b, _ = ctx.needs_input_grad
        dy2 = dy.reshape(-1, dy.shape[-1])
        g = torch.mm(dy2, b).mul_(ctx.scale)  # d(loss)/d(h A^T), [tokens, rank]
        dx = dh = dw = dbias = None
        if need_x:
            dx = torch.mm(dy2, weight)
            if not ctx.separate_h:
                dx.addmm_(g, a)  # the adapter's input gradient, accumulated in place
            dx = dx.reshape(ctx.x_shape)
        if ctx.separate_h and need_h:
            dh = torch.mm(g, a).reshape(ctx.x_shape)
        if need_w:
            dw = torch.mm(dy2.t(), x2)
        if need_bias and ctx.has_bias:
            dbias = dy2.sum(0)
        da = torch.mm(g.t(), h2) if need_a else None
        db = torch.mm(dy2.t(), mid) if need_b else None
        return dx, dh, dw, dbias, da, db, None


def low_rank_update(x: torch.Tensor, lora_A: nn.Module, lora_B: nn.Module, scale: float,
                    dropout: nn.Module, dropout_position: str,
                    kernel: Callable[[torch.Tensor], torch.Tensor] | None = None) -> torch.Tensor:
    """scale * B(A(x)) with dropout before A ("pre") or on the result ("post"), computed in the
    adapter's dtype; `kernel` replaces the B(A(h) * scale) product (Triton)."""
    adapter_dtype = lora_A.weight.dtype
    h = x.to(adapter_dtype) if x.dtype != adapter_dtype else x
    if dropout_position == "pre":
        h = dropout(h)
    out = kernel(h) if kernel is not None else lora_B(lora_A(h) * scale)
    if dropout_position == "post":
        out = dropout(out)
    return out


class AdapterLayer(nn.Module):
    """A frozen base module plus LoRA update(s) that can be switched off, leaving the base
    alone (the DPO/GRPO reference policy)."""

    disabled: bool = False
    merged: bool = False


class LoraLinear(AdapterLayer):
    def __init__(self, base: nn.Module, spec: LoraSpec,
                 row_norm_reduce: Callable[[torch.Tensor], torch.Tensor] | None = None) -> None:
        """`row_norm_reduce` (DoRA on a weight split by columns, a Megatron row-parallel
        linear): sums each row's squared norm over the ranks holding its other columns."""
        super().__init__()
        self.row_norm_reduce = row_norm_reduce
        self.base = base
        self.base.requires_grad_(False)
        in_features, out_features = _features(base)
        dtype = getattr(torch, spec.dtype) if spec.dtype else base.weight.dtype
        device = base.weight.device
        self.lora_A = nn.Linear(in_features, spec.rank, bias=False, dtype=dtype, device=device)
        self.lora_B = nn.Linear(spec.rank, out_features, bias=False, dtype=dtype, device=device)
        init_weight(self.lora_A.weight, spec.a_init, spec.rank)
        init_weight(self.lora_B.weight, spec.b_init, spec.rank)
        self.spec = spec
        self.scale = spec.scale
        self.dropout = nn.Dropout(spec.dropout) if spec.dropout > 0 else nn.Identity()
        self.dropout_position = spec.dropout_position
        self.use_triton = spec.use_triton
        self.disabled = False
        """Adapter off: the layer computes the base alone (the frozen reference policy)."""
        self.merged = False
        self._unmerged_weight: torch.Tensor | None = None
        self.register_buffer("lora_A_init", None, persistent=False)
        self.register_buffer("lora_B_init", None, persistent=False)
        if spec.weight_init != "default":
            self._residual_init(spec)
        self.use_dora = spec.use_dora
        if spec.use_dora:
            weight = base.weight
            # nn.Linear or a Megatron parallel linear, with a plain float weight whose rows are
            # whole (not a DTensor shard, not a quantized weight).
            split = getattr(base, "input_size_per_partition", None)
            if type(weight) not in _PLAIN or not weight.is_floating_point() \
                    or split not in (None, getattr(base, "input_size", None)) \
                    and row_norm_reduce is None:
                raise SetupError(f"DoRA adapts floating-point linear layers with whole weight "
                                 f"rows, not {type(base).__name__} with a {type(weight).__name__} "
                                 f"{weight.dtype} weight (quantized bases are not supported, nor "
                                 "weights split by tensor parallelism)")
            self.lora_magnitude_vector = nn.Parameter(torch.empty(out_features, dtype=dtype,
                                                                  device=device))
            """DoRA's magnitude m, one per output row: ||W + scale * B A|| at creation."""
            self.reset_magnitude()

    @torch.no_grad()
    def reset_magnitude(self) -> None:
        """DoRA: m = ||W + scale * B A|| per row, PEFT's init; call again after replacing A or
        B (Megatron initialises them after construction)."""
        norm = self._weight_norm(self.lora_B.weight.float() @ self.lora_A.weight.float())
        self.lora_magnitude_vector.copy_(norm.to(self.lora_magnitude_vector.dtype))

    def _residual_init(self, spec: LoraSpec) -> None:
        weight = self.base.weight
        if not isinstance(self.base, nn.Linear) or type(weight) not in _PLAIN \
                or not weight.is_floating_point():
            raise SetupError(f"{spec.weight_init} rewrites plain floating-point linear weights, "
                             f"not {type(self.base).__name__} with a {type(weight).__name__} "
                             f"{weight.dtype} weight (quantized bases are not supported)")
        self.start_from_residual(spec.weight_init)

    def start_from_residual(self, method: str) -> None:
        """PiSSA/OLoRA (`method`): set A and B from the base weight, rewrite the base to the
        residual and keep the init factors. The Megatron backend calls it itself, after its
        own A/B init, on a parallel linear whose weight is whole (tensor_model_parallel_size
        1)."""
        try:
            a0, b0 = residual_init(self.base, self.lora_A, self.lora_B, method, self.scale)
        except ValueError as exc:
            raise SetupError(str(exc)) from None
        self.register_buffer("lora_A_init", a0, persistent=False)
        self.register_buffer("lora_B_init", b0, persistent=False)
        """The init factors: what the base weight lost, for the disabled layer and export."""

    def init_delta(self, x: torch.Tensor) -> torch.Tensor:
        """scale * B0 A0 x, what a residual init took out of the base (no dropout)."""
        a0, b0 = self.lora_A_init, self.lora_B_init
        if a0 is None or b0 is None:
            raise RuntimeError("this LoRA layer has no residual init (pissa/olora)")
        h = x.to(a0.dtype) if x.dtype != a0.dtype else x
        return nn.functional.linear(nn.functional.linear(h, a0) * self.scale, b0)

    # ---- forward -----------------------------------------------------------------------

    def forward(self, x: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
        if self.merged:
            if self.disabled:
                raise RuntimeError("LoRA layer is merged into its base weight, so it cannot be "
                                   "disabled; unmerge it first")
            return self.base(x, *args, **kwargs)
        if self.disabled:
            if self.lora_A_init is not None:
                return self._add(self.base(x, *args, **kwargs), self.init_delta(x))
            return self.base(x, *args, **kwargs)
        if self.use_dora:
            return self._dora_forward(x, self.base(x, *args, **kwargs))
        if not args and not kwargs and self._fusable(x):
            h = self.dropout(x) if self.dropout_position == "pre" and self._dropping() else None
            return _FusedLoraLinear.apply(x, h, self.base.weight, self.base.bias,
                                          self.lora_A.weight, self.lora_B.weight, self.scale)
        return self._add_update(self.base(x, *args, **kwargs), x)

    def _add_update(self, result: Any, x: torch.Tensor) -> Any:
        """Add the update to the base output; Megatron parallel linears return (output, bias)."""
        return self._add(result, self.lora_delta(x))

    @staticmethod
    def _add(result: Any, update: torch.Tensor) -> Any:
        if isinstance(result, tuple):
            output, *rest = result
            return (output + update.to(output.dtype), *rest)
        return result + update.to(result.dtype)

    def lora_delta(self, x: torch.Tensor) -> torch.Tensor:
        """scale * B(A(x)) with the configured dropout, in the adapter dtype."""
        kernel = None
        if self.use_triton and x.is_cuda:
            from lora_rl.lora.kernel_select import triton_installed

            if triton_installed():
                from lora_rl.lora.triton_kernel import fused_lora

                def kernel(h: torch.Tensor) -> torch.Tensor:
                    return fused_lora(h, self.lora_A.weight, self.lora_B.weight, self.scale)
        return low_rank_update(x, self.lora_A, self.lora_B, self.scale, self.dropout,
                               self.dropout_position, kernel)

    def _weight_norm(self, lora_weight: torch.Tensor) -> torch.Tensor:
        """||W + scale * B A|| per output row (PEFT's `get_weight_norm`)."""
        weight = self.base.weight.to(lora_weight.dtype) + self.scale * lora_weight
        if self.row_norm_reduce is None:
            return torch.linalg.norm(weight, dim=1)
        return self.row_norm_reduce(weight.square().sum(dim=1)).sqrt()

    def _dora_forward(self, x: torch.Tensor, result: Any) -> Any:
        """PEFT's DoraLinearLayer.forward added to the base output: (m/||W'|| - 1) x W^T +
        (m/||W'||) scale B A x, the norm detached. A Megatron parallel linear returns
        (output, bias); its bias is in the output unless `skip_bias_add`."""
        if isinstance(result, tuple):
            output, *rest = result
            return (self._dora_output(x, output, self._output_bias(), self._parallel_matmul),
                    *rest)
        return self._dora_output(x, result, self.base.bias, None)

    def _output_bias(self) -> torch.Tensor | None:
        """The bias a Megatron parallel linear has added to its output (none with
        `skip_bias_add`, which returns it apart)."""
        return None if getattr(self.base, "skip_bias_add", False) else self.base.bias

    def _parallel_matmul(self, h: torch.Tensor) -> torch.Tensor:
        """h W^T through the parallel linear itself (its tensor-parallel communication
        included), without the bias."""
        output, _ = self.base(h.to(self.base.weight.dtype))
        bias = self._output_bias()
        return (output - bias if bias is not None else output).to(h.dtype)

    def _dora_output(self, x: torch.Tensor, result: torch.Tensor, bias: torch.Tensor | None,
                     matmul: Callable[[torch.Tensor], torch.Tensor] | None) -> torch.Tensor:
        a, b = self.lora_A.weight, self.lora_B.weight
        h = x.to(a.dtype) if x.dtype != a.dtype else x
        dropping = self._dropping()
        if dropping:
            h = self.dropout(h)
        norm = self._weight_norm((b @ a).detach().to(h.dtype)).detach()
        factor = (self.lora_magnitude_vector.to(h.dtype) / norm).view(1, -1)
        if dropping:
            base_result = matmul(h) if matmul is not None else \
                nn.functional.linear(h, self.base.weight.to(h.dtype))
        else:
            base_result = (result - bias if bias is not None else result).to(h.dtype)
        extra = (factor - 1) * base_result + factor * self.lora_B(self.lora_A(h)) * self.scale
        return result + extra.to(result.dtype)

    def _dropping(self) -> bool:
        return self.training and isinstance(self.dropout, nn.Dropout)

    def _fusable(self, x: torch.Tensor) -> bool:
        """The fused torch path computes exactly what the modules would: only when the modules
        are the plain ones (no subclass, no hooks, no parallel style) on plain tensors."""
        base, lora_a, lora_b = self.base, self.lora_A, self.lora_B
        if type(base) is not nn.Linear or type(lora_a) is not nn.Linear \
                or type(lora_b) is not nn.Linear:
            return False
        if self.dropout_position == "post" and self._dropping():
            return False
        if x.is_cuda and self.use_triton:
            return False
        tensors = [x, base.weight, lora_a.weight, lora_b.weight]
        if base.bias is not None:
            tensors.append(base.bias)
        if any(type(t) not in _PLAIN or t.dtype != x.dtype for t in tensors):
            return False
        if x.dim() == 0 or torch.is_autocast_enabled(x.device.type):
            return False
        return not (_hooked(base) or _hooked(lora_a) or _hooked(lora_b) or _hooked(self)
                    or _global_hooks())

    # ---- merge / unmerge ---------------------------------------------------------------

    def delta_weight(self) -> torch.Tensor:
        """What the merge adds to the base weight, in fp32 (computed in fp32, then cast):
        scale * B @ A; with DoRA (m / ||W'||) W' - W, W' = W + scale * B @ A (PEFT's merge)."""
        delta = (self.lora_B.weight.float() @ self.lora_A.weight.float()) * self.scale
        if not self.use_dora:
            return delta
        weight = self.base.weight.float()
        merged = weight + delta
        factor = self.lora_magnitude_vector.float() / torch.linalg.norm(merged, dim=1)
        return factor.view(-1, 1) * merged - weight

    @torch.no_grad()
    def merge(self) -> None:
        if self.merged:
            raise RuntimeError("LoRA layer is already merged; unmerge it first")
        weight = self.base.weight
        if _packed(weight):
            raise RuntimeError(f"cannot merge LoRA into a quantized {type(self.base).__name__} "
                               f"({type(weight).__name__} {weight.dtype} weight): run base + "
                               "adapter unmerged (lora_weight_sync: split)")
        # Keep the exact original: unmerge must restore it bit for bit, which subtracting the
        # delta again cannot guarantee once the merged weight was rounded to a low precision.
        self._unmerged_weight = weight.detach().clone()
        weight.copy_((weight.float() + self.delta_weight()).to(weight.dtype))
        self.merged = True

    @torch.no_grad()
    def unmerge(self) -> None:
        if not self.merged or self._unmerged_weight is None:
            raise RuntimeError("LoRA layer is not merged, so there is nothing to unmerge")
        self.base.weight.copy_(self._unmerged_weight)
        self._unmerged_weight = None
        self.merged = False

    def extra_repr(self) -> str:
        return (f"rank={self.lora_A.out_features}, scale={self.scale:g}, "
                f"dropout={self.spec.dropout:g} ({self.dropout_position})"
                + (", dora" if self.use_dora else "")
                + (f", {self.spec.weight_init}" if self.lora_A_init is not None else ""))
