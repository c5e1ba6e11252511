"""What a config names on the Hugging Face hub (a pipeline, a reward's weights), resolved in the driver before
Ray, an actor or an MLflow run starts.

Online, one metadata request per repository (no retries) says whether it exists and whether it is gated; the
pipeline's model_index.json (a few hundred bytes) names its class. Offline (HF_HUB_OFFLINE=1, or the hub does
not answer), the files must already be in this machine's Hugging Face cache. Each failure is a ValueError
naming the model or reward and what to do.
"""

import json
from pathlib import Path

import huggingface_hub
from huggingface_hub import constants, errors

from rlft.zoo.names import PIPELINE_PARTS, check_model_name, check_pipeline_class

# A part's weights, under any of the names diffusers and transformers write (single file or sharded).
WEIGHTS = (
    "diffusion_pytorch_model.safetensors",
    "diffusion_pytorch_model.safetensors.index.json",
    "diffusion_pytorch_model.bin",
    "model.safetensors",
    "model.safetensors.index.json",
    "pytorch_model.bin",
)
CONFIG_FILE = {"scheduler": "scheduler_config.json", "tokenizer": "tokenizer_config.json"}
TIMEOUT_S = 10.0


class Unreachable(Exception):
    """The hub cannot be asked: offline by setting, or it did not answer."""


def check_hub_model(name: str) -> str:
    """The pipeline class of hub model `name`, or a ValueError naming it: not on the hub, gated without a
    token, an unsupported class, or offline and not cached. Built-in models and folders are left alone."""
    if check_model_name(name) != "hub":
        return ""
    try:
        ask_hub(name, "model")
    except Unreachable as why:
        return cached_index(name, str(why))["_class_name"]
    try:  # a token may open the repository's page but not its files
        index = json.loads(Path(huggingface_hub.hf_hub_download(name, "model_index.json")).read_text())
    except errors.GatedRepoError:
        raise ValueError(gated(f"model {name!r}", name)) from None
    except (OSError, errors.HfHubHTTPError) as error:
        raise ValueError(f"model {name!r}: its model_index.json could not be fetched ({error})") from None
    check_pipeline_class(str(index.get("_class_name")), f"model {name!r}")
    return str(index["_class_name"])


def cached_index(name: str, why: str) -> dict:
    """model_index.json from the cache (its pipeline class checked), with every part training loads (its
    config and weights) cached too."""
    index_file = cached(name, "model_index.json")
    if index_file is None:
        raise ValueError(not_cached(f"model {name!r}", name, why, "or pass --model a local pipeline folder"))
    index = json.loads(Path(index_file).read_text())
    check_pipeline_class(str(index.get("_class_name")), f"model {name!r}")
    for part in PIPELINE_PARTS[index["_class_name"]]:
        if index.get(part) in (None, [None, None]):
            continue  # an optional part the pipeline leaves out
        config = cached(name, f"{part}/{CONFIG_FILE.get(part, 'config.json')}")
        weights = part in CONFIG_FILE or any(cached(name, f"{part}/{w}") for w in WEIGHTS)
        if config is None or not weights:
            raise ValueError(
                not_cached(f"model {name!r}", name, why, f"(its {part} is missing) or pass a local folder")
            )
    return index


def check_hub_files(what: str, repo: str, files: tuple[str, ...], fix: str) -> None:
    """A reward's weights: `repo` exists and is not gated beyond reach (online), or `files` are cached."""
    try:
        ask_hub(repo, what)
    except Unreachable as why:
        missing = [f for f in files if cached(repo, f) is None]
        if missing:
            raise ValueError(not_cached(what, repo, str(why), fix)) from None


def ask_hub(repo: str, what: str) -> None:
    """One metadata request: a ValueError if `repo` is missing or gated without a token; Unreachable if the
    hub cannot be asked."""
    if constants.HF_HUB_OFFLINE:
        raise Unreachable("HF_HUB_OFFLINE is set")
    try:
        info = huggingface_hub.HfApi().model_info(repo, timeout=TIMEOUT_S)
    except errors.GatedRepoError:
        raise ValueError(gated(what, repo)) from None
    except errors.RepositoryNotFoundError:
        raise ValueError(
            f"{what}: {repo!r} is not on the Hugging Face hub (a typo? a private repository needs HF_TOKEN "
            "or `huggingface-cli login`)"
        ) from None
    except (OSError, errors.HfHubHTTPError) as error:  # no DNS, refused, timed out, a 5xx
        raise Unreachable(f"the hub did not answer: {type(error).__name__}") from None
    if info.gated and huggingface_hub.get_token() is None:
        raise ValueError(gated(what, repo))


def cached(repo: str, filename: str) -> str | None:
    found = huggingface_hub.try_to_load_from_cache(repo, filename)
    return found if isinstance(found, str) else None


def gated(what: str, repo: str) -> str:
    return (
        f"{what}: {repo!r} is gated on the Hugging Face hub: accept its terms at "
        f"https://huggingface.co/{repo}, then set HF_TOKEN or run `huggingface-cli login`"
    )


def not_cached(what: str, repo: str, why: str, fix: str) -> str:
    return (
        f"{what}: cannot load {repo} from the Hugging Face hub or its cache ({why}; not in "
        f"{constants.HF_HUB_CACHE}); download it where there is network (`huggingface-cli download {repo}`, "
        f"with the same HF_HOME) {fix}"
    )


def check_hub_rewards(spec: str) -> None:
    """The hub weights of every reward `spec` names (a,b: each): reachable, or cached when offline."""
    from rlft.rewards import aesthetic, pickscore

    for name in spec.split(","):
        what, fix = f"reward {name!r}", f"or copy the weights to a folder and use {name}:<folder>"
        if name == "aesthetic":
            check_hub_files(what, aesthetic.HUB_CLIP, ("config.json",), fix)
            check_hub_files(what, aesthetic.HUB_HEAD[0], (aesthetic.HUB_HEAD[1],), fix)
        elif name == "pickscore":
            check_hub_files(what, pickscore.HUB_MODEL, ("config.json",), fix)
            check_hub_files(what, pickscore.HUB_PROCESSOR, ("tokenizer_config.json",), fix)
        elif name == "imagereward":  # the package downloads into ~/.cache/ImageReward, not the hub's cache
            if not (Path.home() / ".cache" / "ImageReward" / "ImageReward.pt").is_file():
                check_hub_files(what, "THUDM/ImageReward", ("ImageReward.pt",), fix)
            check_hub_files(what, "bert-base-uncased", ("vocab.txt",), fix)
