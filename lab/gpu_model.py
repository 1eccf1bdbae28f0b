"""Pure capacity and latency model of one vLLM replica on N GPUs (no I/O, no clock).

The simulator in `lab.vllm_sim` advances an engine in steps; this module says how long a step
takes and how many tokens of KV cache fit. The model, per replica of TP x PP GPUs:

* weights W = 2 bytes x parameters (derived from the HF config: layers, hidden size,
  intermediate size, heads, vocab), split over TP x PP GPUs;
* KV cache tokens = (TP x PP x (mem_total x gpu_memory_utilization - overhead) - W) / kvb, where
  kvb = 2 (K and V) x layers x kv_heads x head_dim x 2 bytes per token (vLLM's profile run);
* one engine step reads every weight once (memory bound), reads the KV of every running sequence
  and does 2 x params FLOPs per token processed (prefill chunk + one token per decoding sequence):
  step = (W / BW + kv_tokens x kvb / BW + tokens x 2P / FLOPS) / TP^0.7 + fixed overhead,
  so more GPUs give both a shorter step (sub-linear, all-reduce costs) and more KV cache;
* a sequence is admitted (leaves the waiting queue) only while KV blocks and the per-step token
  budget allow, so requests queue when the cache is full or prefill demand exceeds the budget.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

__all__ = [
    "BLOCK_SIZE",
    "CapacityError",
    "GpuSpec",
    "ModelShape",
    "ReplicaCapacity",
    "gpu_spec",
    "gpu_utilization",
    "percentile",
    "replica_capacity",
    "step_seconds",
    "tp_speedup",
]

MIB = 1024 * 1024
GIB = 1024 * MIB
BLOCK_SIZE = 16            # vLLM's KV block size in tokens
DTYPE_BYTES = 2            # fp16 / bf16 ("auto" for the models the lab serves)
OVERHEAD_MIB = 1536        # per GPU: activation peak of the profile run + CUDA graphs + NCCL
CONTEXT_MIB = 300          # per GPU: CUDA context, outside gpu_memory_utilization
BW_EFFICIENCY = 0.8        # achieved share of peak memory bandwidth
FLOPS_EFFICIENCY = 0.5     # achieved share of peak dense fp16 tensor FLOPS
STEP_OVERHEAD_S = 0.002    # scheduler + sampling + kernel launches per step
TP_EXPONENT = 0.7          # speedup of tensor parallelism: TP ** 0.7


class CapacityError(ValueError):
    """The engine cannot start with this model, GPU and parallel configuration."""


@dataclass(frozen=True)
class GpuSpec:
    """One GPU model: memory, peak memory bandwidth (GB/s), peak dense fp16 TFLOPS, TDP (W)."""

    name: str
    memory_total_mib: int
    bandwidth_gbs: float
    tflops: float
    tdp_w: float = 300.0


_GPU_TABLE: tuple[tuple[str, float, float, float], ...] = (
    # substring of the name, GB/s, dense fp16 TFLOPS, TDP W
    ("H100", 3350.0, 989.0, 700.0),
    ("A100", 1935.0, 312.0, 400.0),
    ("L40", 864.0, 181.0, 300.0),
    ("A6000", 768.0, 155.0, 300.0),
    ("L4", 300.0, 121.0, 72.0),
    ("T4", 320.0, 65.0, 70.0),
)


def gpu_spec(name: str, memory_total_mib: int) -> GpuSpec:
    """The spec of a GPU named like nvidia-smi does; unknown names get A6000-class numbers."""
    for key, bw, tflops, tdp in _GPU_TABLE:
        if key in name:
            return GpuSpec(name, int(memory_total_mib), bw, tflops, tdp)
    return GpuSpec(name, int(memory_total_mib), 768.0, 155.0, 300.0)


@dataclass(frozen=True)
class ModelShape:
    """The parts of a Hugging Face config.json that decide memory and compute."""

    num_attention_heads: int
    num_hidden_layers: int
    hidden_size: int
    num_key_value_heads: int
    intermediate_size: int
    vocab_size: int
    max_position_embeddings: int

    @classmethod
    def from_config(cls, cfg: dict[str, Any]) -> ModelShape:
        """Read a HF config dict; KeyError if a required field is missing."""
        heads = int(cfg["num_attention_heads"])
        hidden = int(cfg["hidden_size"])
        return cls(
            num_attention_heads=heads,
            num_hidden_layers=int(cfg["num_hidden_layers"]),
            hidden_size=hidden,
            num_key_value_heads=int(cfg.get("num_key_value_heads") or heads),
            intermediate_size=int(cfg.get("intermediate_size") or 0),
            vocab_size=int(cfg.get("vocab_size") or 32000),
            max_position_embeddings=int(cfg.get("max_position_embeddings") or 4096),
        )

    @property
    def head_dim(self) -> int:
        """Size of one attention head."""
        return self.hidden_size // self.num_attention_heads

    def parameters(self) -> float:
        """Parameter count: attention (q, o + GQA k, v), gated MLP, embeddings and LM head."""
        h = self.hidden_size
        kv_dim = self.num_key_value_heads * self.head_dim
        attn = 2 * h * h + 2 * h * kv_dim
        mlp = 3 * h * self.intermediate_size if self.intermediate_size else 8 * h * h
        return float(self.num_hidden_layers * (attn + mlp) + 2 * self.vocab_size * h)

    def weight_bytes(self) -> float:
        """Bytes of fp16 weights (Llama-2-13B: ~26 GB)."""
        return self.parameters() * DTYPE_BYTES

    def kv_bytes_per_token(self) -> float:
        """Bytes of K and V cache per token over all layers (Llama-2-13B: 800 KiB)."""
        return float(2 * self.num_hidden_layers * self.num_key_value_heads * self.head_dim
                     * DTYPE_BYTES)


@dataclass(frozen=True)
class ReplicaCapacity:
    """What one engine of TP x PP GPUs holds."""

    gpus: int
    weights_mib_per_gpu: float
    kv_mib_per_gpu: float
    kv_cache_tokens: int
    memory_used_mib_per_gpu: float

    @property
    def kv_blocks(self) -> int:
        """Number of KV cache blocks of BLOCK_SIZE tokens."""
        return self.kv_cache_tokens // BLOCK_SIZE


def tp_speedup(tp: int) -> float:
    """How much faster one step runs on `tp` tensor-parallel GPUs (sub-linear: tp ** 0.7)."""
    return float(max(1, tp)) ** TP_EXPONENT


def replica_capacity(model: ModelShape, gpu: GpuSpec, tp: int, pp: int,
                     gpu_memory_utilization: float, max_model_len: int) -> ReplicaCapacity:
    """KV cache size after the weights are loaded; CapacityError with vLLM's wording if the
    weights do not fit or the cache cannot hold one sequence of `max_model_len` tokens."""
    gpus = tp * pp
    budget_mib = gpu.memory_total_mib * gpu_memory_utilization
    weights_mib = model.weight_bytes() / MIB / gpus
    if weights_mib + OVERHEAD_MIB / 2 > gpu.memory_total_mib:
        raise CapacityError(
            f"torch.OutOfMemoryError: CUDA out of memory. Tried to allocate "
            f"{weights_mib / 1024:.2f} GiB. GPU 0 has a total capacity of "
            f"{gpu.memory_total_mib / 1024:.2f} GiB")
    kv_mib = budget_mib - weights_mib - OVERHEAD_MIB
    if kv_mib <= 0:
        raise CapacityError(
            "No available memory for the cache blocks. Try increasing "
            "`gpu_memory_utilization` when initializing the engine.")
    tokens = int(kv_mib * MIB * gpus / model.kv_bytes_per_token()) // BLOCK_SIZE * BLOCK_SIZE
    if tokens < max_model_len:
        raise CapacityError(
            f"The model's max seq len ({max_model_len}) is larger than the maximum number of "
            f"tokens that can be stored in KV cache ({tokens}). Try increasing "
            "`gpu_memory_utilization` or decreasing `max_model_len` when initializing the engine.")
    return ReplicaCapacity(gpus, weights_mib, kv_mib, tokens, budget_mib + CONTEXT_MIB)


def step_seconds(model: ModelShape, gpu: GpuSpec, tp: int, tokens: int, kv_tokens: int) -> float:
    """Duration of one engine step that processes `tokens` tokens (prefill chunk plus one per
    decoding sequence) while attending over `kv_tokens` cached tokens."""
    bw = gpu.bandwidth_gbs * 1e9 * BW_EFFICIENCY
    flops = gpu.tflops * 1e12 * FLOPS_EFFICIENCY
    memory = (model.weight_bytes() + kv_tokens * model.kv_bytes_per_token()) / bw
    compute = tokens * 2.0 * model.parameters() / flops
    return (memory + compute) / tp_speedup(tp) + STEP_OVERHEAD_S


def gpu_utilization(busy_fraction: float, occupancy: float) -> float:
    """DCGM-style GPU utilization in percent for a window in which the engine stepped during
    `busy_fraction` of the time with a batch filling `occupancy` (0-1, the larger of KV cache
    usage and running / 128 sequences) of the card: busy x (25 + 75 x occupancy). A lone
    request keeps the GPU busy but reads ~25-30 %, a full batch reads ~100 %."""
    busy = min(1.0, max(0.0, busy_fraction))
    occ = min(1.0, max(0.0, occupancy))
    return round(busy * (25.0 + 75.0 * occ), 1)


def percentile(values: list[float], q: float) -> float:
    """The q-quantile (0-1) of `values` by nearest rank; nan for an empty list."""
    if not values:
        return math.nan
    ordered = sorted(values)
    rank = max(1, math.ceil(q * len(ordered)))
    return ordered[rank - 1]
