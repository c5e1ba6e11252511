"""The trainable policy: the denoising model (a UNet, or SD3's transformer) with a LoRA adapter (through
`peft`) or fully fine-tuned; its reference.

With LoRA the reference is the same model with the adapter disabled, not a second copy. Only
with full fine-tuning does a frozen copy exist. Adapters are saved with the pipeline class's own
`save_lora_weights`, in the format its `load_lora_weights(folder)` reads, so a result loads into a stock
pipeline of the same family.
"""

import copy
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Protocol

import torch
from diffusers import StableDiffusionPipeline
from diffusers.training_utils import cast_training_params
from diffusers.utils import convert_state_dict_to_diffusers
from peft import LoraConfig
from peft.utils import get_peft_model_state_dict, set_peft_model_state_dict
from torch import Tensor

from rlft.families.registry import denoiser_for
from rlft.zoo.loading import load_pipeline
from rlft.zoo.names import DEFAULT_LORA_TARGETS

ADAPTER_FILE = "pytorch_lora_weights.safetensors"


class Policy:
    """Owns the trainable model; `reference()` gives the frozen reference for the same inputs.

    `pipeline_class` saves the adapter (its `save_lora_weights`); `part` is the model's name in the pipeline
    ("unet" or "transformer"), which names the saved layers."""

    def __init__(
        self,
        model: torch.nn.Module,
        *,
        pipeline_class: type = StableDiffusionPipeline,
        part: str = "unet",
        lora_rank: int = 4,
        lora_alpha: float | None = None,
        lora_targets: tuple[str, ...] = DEFAULT_LORA_TARGETS,
        full_finetune: bool = False,
    ):
        if lora_rank < 1:
            raise ValueError(f"lora_rank must be >= 1, got {lora_rank}")
        self.model, self.pipeline_class, self.part = model, pipeline_class, part
        self.full_finetune = full_finetune
        if full_finetune:
            self._frozen = copy.deepcopy(model).requires_grad_(False).eval()
            model.requires_grad_(True)
        else:
            self._frozen = None
            # peft's default init sets B = 0, so the policy starts equal to the reference.
            config = LoraConfig(
                r=lora_rank, lora_alpha=lora_alpha or lora_rank, target_modules=list(lora_targets)
            )
            model.add_adapter(config)
            # A bfloat16 or float16 model's LoRA trains in float32, as diffusers' training scripts do: in
            # bfloat16 an AdamW step of 1e-4 on a weight of 0.1 rounds away. peft casts the inputs to match.
            if any(p.dtype in (torch.float16, torch.bfloat16) for p in self.parameters()):
                cast_training_params(model, dtype=torch.float32)  # float64 (gradient checks) stays
        self.model.train()

    def parameters(self) -> list[torch.nn.Parameter]:
        return [p for p in self.model.parameters() if p.requires_grad]

    @contextmanager
    def reference(self) -> Iterator[torch.nn.Module]:
        """The frozen reference model, for use under `torch.no_grad()`."""
        if self._frozen is not None:
            yield self._frozen
            return
        self.model.disable_adapters()
        try:
            yield self.model
        finally:
            self.model.enable_adapters()

    def state_dict(self) -> dict[str, Tensor]:
        """The trained weights only (the LoRA matrices, or the whole model): what crosses to samplers."""
        if self.full_finetune:
            return {k: v.detach().clone() for k, v in self.model.state_dict().items()}
        return {k: v.detach().clone() for k, v in get_peft_model_state_dict(self.model).items()}

    def load_state_dict(self, state: dict[str, Tensor]) -> None:
        if self.full_finetune:
            self.model.load_state_dict(state)
            return
        result = set_peft_model_state_dict(self.model, state)
        if result.unexpected_keys:
            raise ValueError(
                f"adapter weights do not fit this {self.part}: unexpected {result.unexpected_keys[:3]}"
            )

    def save(self, folder: str | Path) -> Path:
        """Save the adapter as diffusers LoRA safetensors (or, fully fine-tuned, the model in a subfolder
        named after its part, as a pipeline folder holds it) into `folder`."""
        folder = Path(folder)
        if self.full_finetune:
            self.model.save_pretrained(folder / self.part)
            return folder
        layers = get_peft_model_state_dict(self.model)
        if self.part == "unet":  # as diffusers' own training scripts save each family (FLUX's loader
            layers = convert_state_dict_to_diffusers(layers)  # misreads the converted names)
        self.pipeline_class.save_lora_weights(
            folder,
            **{
                f"{self.part}_lora_layers": layers,
                f"{self.part}_lora_adapter_metadata": self.model.peft_config["default"].to_dict(),
            },
            weight_name=ADAPTER_FILE,
            safe_serialization=True,
        )
        return folder

    def adapter_files(self) -> dict[str, bytes]:
        """What `save` writes, as {relative path: bytes}: a worker's adapter, for a driver on another node."""
        with tempfile.TemporaryDirectory() as folder:
            self.save(folder)
            files = [f for f in Path(folder).rglob("*") if f.is_file()]
            return {str(f.relative_to(folder)): f.read_bytes() for f in files}


class LocalTrained:
    """A policy and its optimizer in this process: what a checkpoint holds (rlft/algorithms/backend.py's
    `Trained`)."""

    def __init__(self, policy: Policy, optimizer: torch.optim.Optimizer):
        self.policy, self.optimizer = policy, optimizer
        self.sampling_weights: dict[str, Tensor] | None = None  # a pipelined run's next sampling weights

    def state(self) -> dict:
        state = {"weights": self.policy.state_dict(), "optimizer": self.optimizer.state_dict()}
        if self.sampling_weights is not None:
            state["sampling_weights"] = self.sampling_weights
        return state

    def load(self, state: dict) -> None:
        self.policy.load_state_dict(state["weights"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.sampling_weights = state.get("sampling_weights")

    @contextmanager
    def sampling(self) -> Iterator[int]:
        """The policy holds `sampling_weights` inside the block (when set) and its own after it; yields how
        many epochs' updates the sampling weights lack (1 when set, 0 when not)."""
        if self.sampling_weights is None:
            yield 0
            return
        own = self.policy.state_dict()
        self.policy.load_state_dict(self.sampling_weights)
        try:
            yield 1
        finally:
            self.policy.load_state_dict(own)

    def adapter_files(self) -> dict[str, bytes]:
        return self.policy.adapter_files()


def pick_device(choice: str) -> torch.device:
    if choice == "cuda" and not torch.cuda.is_available():
        raise ValueError("device='cuda' but torch sees no CUDA device")
    return torch.device("cuda" if choice != "cpu" and torch.cuda.is_available() else "cpu")


class PolicySettings(Protocol):
    """What `build_policy` reads of a config (rlft/configs/base.py's `RunConfig` has every one)."""

    model: str
    seed: int
    device: str
    threads: int | None
    lora_rank: int
    lora_alpha: float | None
    lora_targets: tuple[str, ...]
    full_finetune: bool
    gradient_checkpointing: bool
    dtype: str
    compile: bool


def build_policy(cfg: PolicySettings, device: torch.device | None = None) -> tuple:
    """(the pipeline, the policy): the pipeline's UNet or transformer is the trainable policy, so sampling
    through `pipe` uses the current weights."""
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    device = device or pick_device(cfg.device)
    pipe = load_pipeline(cfg.model, seed=cfg.seed, device=device, dtype=getattr(torch, cfg.dtype))
    denoiser = denoiser_for(pipe)
    torch.manual_seed(cfg.seed)  # the LoRA A-matrix init
    policy = Policy(
        denoiser.model,
        pipeline_class=type(pipe),
        part=denoiser.model_part,
        lora_rank=cfg.lora_rank,
        lora_alpha=cfg.lora_alpha,
        lora_targets=cfg.lora_targets,
        full_finetune=cfg.full_finetune,
    )
    if cfg.gradient_checkpointing:
        denoiser.model.enable_gradient_checkpointing()
    if cfg.compile:  # in place: the pipeline, the policy and its reference all call the compiled forward
        denoiser.model.compile()
    return pipe, policy
