"""Pretraining the tiny model on rlft/world/scenes.py's captioned images: the VAE first, then the UNet
with the text encoder, as Stable Diffusion was trained (latent diffusion, epsilon prediction, 10 % empty
captions for classifier-free guidance), at the tiny shapes of `rlft.world.tiny_model.tiny_parts`.

Deterministic on a CPU for a seed and thread count: the images, the batches, the noise and the weights'
initialisation all come from seeded generators. The result is three safetensors files and a `model.json`
(the VAE's latent scale, the settings, the losses and the time taken), which `rlft.world.tiny_model` loads as
`--model tiny`. `rlft pretrain-tiny` (or `jobs/pretrain_tiny.py`) is the command line; it writes to a new
folder, never over the shipped weights.
"""

import hashlib
import json
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal

import torch
import torch.nn.functional as F
from diffusers import DDPMScheduler
from safetensors.torch import save_file
from torch import Tensor
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

from rlft.world.scenes import caption_vocabulary, make_dataset
from rlft.world.tiny_model import TINY_MODEL_FOLDER, TINY_SCHEDULER, build_tiny_tokenizer, tiny_parts

Log = Callable[[str], None]


@dataclass(frozen=True)
class PretrainSettings:
    seed: int = 0
    """Seeds the images, the initial weights, the batches and the noise."""
    images: int = 20000
    """Captioned images generated for training (rlft/world/scenes.py)."""
    vae_steps: int = 600
    """AutoencoderKL optimizer steps."""
    vae_batch: int = 32
    vae_lr: float = 1e-3
    kl_weight: float = 1e-6
    """Weight of the latents' KL divergence to N(0, 1) against the reconstruction MSE."""
    unet_steps: int = 5000
    """UNet and text-encoder optimizer steps."""
    unet_batch: int = 64
    unet_lr: float = 2e-3
    """The peak learning rate: reached after 200 warm-up steps, then a cosine down to a tenth of it."""
    empty_caption_fraction: float = 0.1
    """Captions replaced by "" in training, so the model also learns the unconditional output that
    classifier-free guidance needs."""
    snr_gamma: float = 5.0
    """Min-SNR loss weighting (Hang et al., arXiv 2303.09556): each timestep's loss is weighted by
    min(SNR, gamma) / SNR, which speeds convergence severalfold; 0 turns it off."""
    ema_decay: float = 0.998
    """The saved UNet and text encoder are an exponential moving average of the trained ones (over about
    the last 1 / (1 - decay) steps: 500 at 0.998)."""
    vae_max_seconds: float | None = None
    """Stop the VAE phase after this many seconds (the steps run are recorded); None: run every step."""
    unet_max_seconds: float | None = None
    """Stop the UNet phase after this many seconds (the steps run are recorded); None: run every step."""
    log_every: int = 100
    save_every: int = 500
    """Write the moving-average weights every this many UNet steps (a run stopped early keeps them)."""


def _warmup(step: int, warmup: int = 200) -> float:
    return min(1.0, (step + 1) / warmup)


def warmup_cosine(step: int, steps: int, warmup: int = 200, floor: float = 0.1) -> float:
    """The learning rate's factor at `step` of `steps`: linear warm-up over `warmup` steps, then a cosine
    from 1 down to `floor` at the last step."""
    if step < warmup:
        return _warmup(step, warmup)
    done = (step - warmup) / max(1, steps - 1 - warmup)
    return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * min(1.0, done)))


def _progress(log: Log, phase: str, step: int, steps: int, losses: list[Tensor], start: float) -> None:
    elapsed = time.perf_counter() - start
    recent = torch.stack(losses[-50:]).mean().item()
    log(
        f"{phase} step {step + 1:6d}/{steps} | loss {recent:.4f} | {(step + 1) / elapsed:.1f} steps/s"
        f" | {elapsed:.0f} s"
    )


def train_vae(vae, images: Tensor, s: PretrainSettings, generator: torch.Generator, log: Log) -> dict:
    """Reconstruction MSE on [-1, 1] plus a small KL term; images (N, 3, 32, 32) in [0, 1] on the device."""
    optimizer = torch.optim.AdamW(vae.parameters(), lr=s.vae_lr, weight_decay=0.0)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, _warmup)
    vae.train()
    losses, start, step = [], time.perf_counter(), 0
    for step in range(s.vae_steps):
        index = torch.randint(len(images), (s.vae_batch,), generator=generator, device=generator.device)
        x = images[index.to(images.device)] * 2 - 1  # (b, 3, 32, 32)
        posterior = vae.encode(x).latent_dist
        z = posterior.mean + posterior.std * torch.randn(
            posterior.mean.shape, generator=generator, device=generator.device
        ).to(x.device)
        recon = vae.decode(z).sample
        mse = F.mse_loss(recon, x)
        loss = mse + s.kl_weight * posterior.kl().mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        schedule.step()
        losses.append(mse.detach())  # no .item() per step: a GPU would wait for every step
        if (step + 1) % s.log_every == 0 or step + 1 == s.vae_steps:
            _progress(log, "vae ", step, s.vae_steps, losses, start)
        if s.vae_max_seconds and time.perf_counter() - start > s.vae_max_seconds:
            break
    vae.eval()
    return {
        "vae_steps_run": step + 1,
        "vae_mse": torch.stack(losses[-50:]).mean().item(),
        "vae_seconds": time.perf_counter() - start,
    }


@torch.no_grad()
def encode_all(vae, images: Tensor, batch: int = 512) -> tuple[Tensor, Tensor]:
    """Posterior means and standard deviations of every image's latent: (N, 4, 16, 16) each."""
    means, stds = [], []
    for start in range(0, len(images), batch):
        posterior = vae.encode(images[start : start + batch] * 2 - 1).latent_dist
        means.append(posterior.mean)
        stds.append(posterior.std)
    return torch.cat(means), torch.cat(stds)


def tokenize(tokenizer, captions: list[str]) -> Tensor:
    """Token ids (N, 77) padded as `StableDiffusionPipeline.encode_prompt` pads them."""
    return tokenizer(
        captions,
        padding="max_length",
        max_length=tokenizer.model_max_length,
        truncation=True,
        return_tensors="pt",
    ).input_ids


def train_denoiser(
    unet,
    text_encoder,
    latents: tuple[Tensor, Tensor],
    ids: Tensor,
    empty_ids: Tensor,
    s: PretrainSettings,
    generator: torch.Generator,
    log: Log,
    save: Callable[[torch.nn.ModuleDict, dict], None],
) -> dict:
    """Epsilon prediction on scaled latents with the Stable Diffusion 1.x noise schedule. `save` gets the
    moving average of both modules (the weights to keep) every `s.save_every` steps and at the end."""
    scheduler = DDPMScheduler(**TINY_SCHEDULER)
    alphas = scheduler.alphas_cumprod.to(ids.device)  # (1000,)
    modules = torch.nn.ModuleDict({"unet": unet, "text_encoder": text_encoder})
    ema = AveragedModel(modules, multi_avg_fn=get_ema_multi_avg_fn(s.ema_decay))
    optimizer = torch.optim.AdamW(modules.parameters(), lr=s.unet_lr, weight_decay=1e-4)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: warmup_cosine(step, s.unet_steps))
    means, stds = latents
    modules.train()
    losses, start, step, device = [], time.perf_counter(), 0, ids.device
    for step in range(s.unet_steps):
        index = torch.randint(len(means), (s.unet_batch,), generator=generator, device=generator.device)
        index = index.to(device)
        shape = (s.unet_batch, *means.shape[1:])
        x0 = means[index] + stds[index] * torch.randn(shape, generator=generator).to(device)  # (b, 4, 16, 16)
        noise = torch.randn(shape, generator=generator).to(device)
        t = torch.randint(len(alphas), (s.unet_batch,), generator=generator).to(device)
        a = alphas[t].view(-1, 1, 1, 1)
        xt = a.sqrt() * x0 + (1 - a).sqrt() * noise
        dropped = (torch.rand(s.unet_batch, generator=generator) < s.empty_caption_fraction).to(device)
        batch_ids = torch.where(dropped[:, None], empty_ids.expand(s.unet_batch, -1), ids[index])
        embeds = text_encoder(batch_ids)[0]  # (b, 77, 32), as the pipeline encodes prompts
        error = (unet(xt, t, encoder_hidden_states=embeds).sample - noise).pow(2).mean(dim=(1, 2, 3))  # (b,)
        snr = alphas[t] / (1 - alphas[t])
        weight = (snr.clamp(max=s.snr_gamma) / snr) if s.snr_gamma > 0 else torch.ones_like(snr)
        loss = (weight * error).mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(modules.parameters(), 1.0)
        optimizer.step()
        schedule.step()
        ema.update_parameters(modules)
        losses.append(error.detach().mean())  # the plain epsilon MSE, comparable across weightings
        if (step + 1) % s.log_every == 0 or step + 1 == s.unet_steps:
            _progress(log, "unet", step, s.unet_steps, losses, start)
        stop = s.unet_max_seconds and time.perf_counter() - start > s.unet_max_seconds
        if stop or (step + 1) % s.save_every == 0 or step + 1 == s.unet_steps:
            metrics = {
                "unet_steps_run": step + 1,
                "unet_loss": torch.stack(losses[-200:]).mean().item(),
                "unet_seconds": time.perf_counter() - start,
            }
            save(ema.module, metrics)
        if stop:
            break
    return metrics


@dataclass(frozen=True)
class PretrainArgs:
    settings: PretrainSettings
    out: str | None = None
    """A new folder for unet/vae/text_encoder .safetensors and model.json; default: tiny-model-<date-time>
    here. Never the shipped model's folder, nor one that already holds a model."""
    device: Literal["cpu", "cuda"] = "cpu"
    threads: int | None = None
    """CPU threads for torch; default: torch's own choice."""

    @staticmethod
    def check_out(out: str) -> None:
        """A ValueError naming `out` when it is the shipped model's folder or already holds a model."""
        folder = Path(out).expanduser().resolve()
        if folder == Path(str(TINY_MODEL_FOLDER)).resolve():
            raise ValueError(f"out={out!r} is not allowed: the shipped model is there; choose a new folder")
        if (folder / "model.json").exists() or (folder / "unet.safetensors").exists():
            raise ValueError(f"out={out!r} is not allowed: it already holds a model; choose a new folder")


def pretrain(s: PretrainSettings, out: str | Path, device: str = "cpu", log: Log = print) -> dict:
    """Pretrain the tiny model and write it to `out` (unet/vae/text_encoder .safetensors, model.json);
    the last metrics."""
    start = time.perf_counter()
    images, captions = make_dataset(s.images, s.seed)
    log(f"{len(images)} captioned images made in {time.perf_counter() - start:.1f} s, e.g. {captions[0]!r}")
    tokenizer = build_tiny_tokenizer(caption_vocabulary())
    unet, vae, text_encoder = (m.to(device) for m in tiny_parts(len(tokenizer), s.seed))
    images = images.to(device)
    generator = torch.Generator().manual_seed(s.seed)
    metrics = train_vae(vae, images, s, generator, log)
    means, stds = encode_all(vae, images)
    scaling_factor = 1.0 / means.std().item()  # unit-variance latents, as Stable Diffusion's 0.18215
    log(f"latent scaling factor {scaling_factor:.4f}")
    ids, empty_ids = tokenize(tokenizer, captions).to(device), tokenize(tokenizer, [""]).to(device)
    out = Path(out)

    initial = {"unet": _copy(unet.state_dict()), "text_encoder": _copy(text_encoder.state_dict())}

    def save(averaged: torch.nn.ModuleDict, more: dict) -> None:
        updates = more["unet_steps_run"]
        states = {
            "unet": unbias_ema(averaged["unet"].state_dict(), initial["unet"], s.ema_decay, updates),
            "vae": vae.state_dict(),
            "text_encoder": unbias_ema(
                averaged["text_encoder"].state_dict(), initial["text_encoder"], s.ema_decay, updates
            ),
        }
        record = {
            "scaling_factor": scaling_factor,
            "settings": asdict(s),
            "device": str(device),
            "threads": torch.get_num_threads(),
            "metrics": metrics | more,
            "total_seconds": time.perf_counter() - start,
            "torch": torch.__version__,
        }
        save_model(out, states, record)
        log(f"saved to {out} after {record['total_seconds']:.0f} s: {json.dumps(record['metrics'])}")

    latents = (means * scaling_factor, stds * scaling_factor)
    return train_denoiser(unet, text_encoder, latents, ids, empty_ids, s, generator, log, save)


def _copy(state: dict[str, Tensor]) -> dict[str, Tensor]:
    return {k: v.detach().clone() for k, v in state.items()}


def unbias_ema(state: dict[str, Tensor], initial: dict[str, Tensor], decay: float, updates: int) -> dict:
    """The moving average without its start: torch's AveragedModel copies the weights at its first update,
    which still weigh decay ** (updates - 1) in the average (61 % after 500 steps at 0.999). As Adam corrects
    its moments, remove that share of the initial weights and rescale the rest to weigh 1."""
    if updates <= 1:
        return state
    start = decay ** (updates - 1)
    return {
        k: (v - start * initial[k]) / (1 - start) if v.is_floating_point() else v for k, v in state.items()
    }


def save_model(out: Path, states: dict[str, dict[str, Tensor]], record: dict) -> None:
    """unet/vae/text_encoder .safetensors and model.json in `out`, each file written whole then renamed."""
    out.mkdir(parents=True, exist_ok=True)
    for name, state in states.items():
        state = {k: v.detach().float().cpu().contiguous() for k, v in state.items()}
        if name == "text_encoder":  # transformers 5 drops CLIPTextModel's "text_model." prefix; 4.x needs it
            state = {k if k.startswith("text_model.") else f"text_model.{k}": v for k, v in state.items()}
        save_file(state, str(out / f"{name}.safetensors.tmp"))
        (out / f"{name}.safetensors.tmp").replace(out / f"{name}.safetensors")
    record = record | {"sha256": digests(out)}
    (out / "model.json.tmp").write_text(json.dumps(record, indent=1) + "\n")
    (out / "model.json.tmp").replace(out / "model.json")


def digests(folder: Path) -> dict[str, str]:
    """The SHA-256 of each weights file, recorded in model.json so a test can tell the shipped weights."""
    return {
        f"{name}.safetensors": hashlib.sha256((folder / f"{name}.safetensors").read_bytes()).hexdigest()
        for name in ("unet", "vae", "text_encoder")
    }
