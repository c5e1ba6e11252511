"""The trainable policy: a UNet with a LoRA adapter (through `peft`) or fully fine-tuned; its reference.

With LoRA the reference is the same UNet with the adapter disabled, not a second copy (DESIGN.md). Only
with full fine-tuning does a frozen copy exist. Adapters are saved in the format diffusers'
`pipe.load_lora_weights(folder)` reads, so a result loads into a stock pipeline.
"""

import copy
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Protocol

import torch
from diffusers import StableDiffusionPipeline, UNet2DConditionModel
from diffusers.utils import convert_state_dict_to_diffusers
from peft import LoraConfig
from peft.utils import get_peft_model_state_dict, set_peft_model_state_dict
from torch import Tensor

from rlft.diffusion.models import load_pipeline
from rlft.diffusion.names import DEFAULT_LORA_TARGETS

ADAPTER_FILE = "pytorch_lora_weights.safetensors"


class Policy:
    """Owns the trainable UNet; `reference()` gives the frozen reference for the same inputs."""

    def __init__(
        self,
        unet: UNet2DConditionModel,
        *,
        lora_rank: int = 4,
        lora_alpha: float | None = None,
        lora_targets: tuple[str, ...] = DEFAULT_LORA_TARGETS,
        full_finetune: bool = False,
    ):
        if lora_rank < 1:
            raise ValueError(f"lora_rank must be >= 1, got {lora_rank}")
        self.unet = unet
        self.full_finetune = full_finetune
        if full_finetune:
            self._frozen = copy.deepcopy(unet).requires_grad_(False).eval()
            unet.requires_grad_(True)
        else:
            self._frozen = None
            # peft's default init sets B = 0, so the policy starts equal to the reference.
            config = LoraConfig(
                r=lora_rank, lora_alpha=lora_alpha or lora_rank, target_modules=list(lora_targets)
            )
            unet.add_adapter(config)
        self.unet.train()

    def parameters(self) -> list[torch.nn.Parameter]:
        return [p for p in self.unet.parameters() if p.requires_grad]

    @contextmanager
    def reference(self) -> Iterator[UNet2DConditionModel]:
        """The frozen reference UNet, for use under `torch.no_grad()`."""
        if self._frozen is not None:
            yield self._frozen
            return
        self.unet.disable_adapters()
        try:
            yield self.unet
        finally:
            self.unet.enable_adapters()

    def state_dict(self) -> dict[str, Tensor]:
        """The trained weights only (the LoRA matrices, or the whole UNet): what crosses to samplers."""
        if self.full_finetune:
            return {k: v.detach().clone() for k, v in self.unet.state_dict().items()}
        return {k: v.detach().clone() for k, v in get_peft_model_state_dict(self.unet).items()}

    def load_state_dict(self, state: dict[str, Tensor]) -> None:
        if self.full_finetune:
            self.unet.load_state_dict(state)
            return
        result = set_peft_model_state_dict(self.unet, state)
        if result.unexpected_keys:
            raise ValueError(f"adapter weights do not fit this UNet: unexpected {result.unexpected_keys[:3]}")

    def save(self, folder: str | Path) -> Path:
        """Save the adapter as diffusers LoRA safetensors (or, fully fine-tuned, the UNet) into `folder`."""
        folder = Path(folder)
        if self.full_finetune:
            self.unet.save_pretrained(folder / "unet")
            return folder
        StableDiffusionPipeline.save_lora_weights(
            folder,
            unet_lora_layers=convert_state_dict_to_diffusers(get_peft_model_state_dict(self.unet)),
            unet_lora_adapter_metadata=self.unet.peft_config["default"].to_dict(),
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

    def state(self) -> dict:
        return {"weights": self.policy.state_dict(), "optimizer": self.optimizer.state_dict()}

    def load(self, state: dict) -> None:
        self.policy.load_state_dict(state["weights"])
        self.optimizer.load_state_dict(state["optimizer"])

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


def build_policy(
    cfg: PolicySettings, device: torch.device | None = None
) -> tuple[StableDiffusionPipeline, Policy]:
    """The pipeline whose UNet is the trainable policy (sampling through `pipe` uses the current weights)."""
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    pipe = load_pipeline(cfg.model, seed=cfg.seed, device=device or pick_device(cfg.device))
    torch.manual_seed(cfg.seed)  # the LoRA A-matrix init
    policy = Policy(
        pipe.unet,
        lora_rank=cfg.lora_rank,
        lora_alpha=cfg.lora_alpha,
        lora_targets=cfg.lora_targets,
        full_finetune=cfg.full_finetune,
    )
    return pipe, policy
