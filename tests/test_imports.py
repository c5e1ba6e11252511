"""What a process pays for at start: the job's checks, the scorer actor and a Ray run's driver stay free of
the training code."""

import json
import subprocess
import sys


def loaded_after(imports: str, modules: tuple[str, ...]) -> list[str]:
    """Which of `modules` a fresh Python process holds after `import <imports>`."""
    code = f"import json, sys, {imports}; print(json.dumps([m for m in {modules!r} if m in sys.modules]))"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def test_the_jobs_checks_and_the_scorer_import_no_diffusers_peft_or_ray_train():
    """A refused flag comes in seconds, not after the training code's ten seconds of imports, and a scorer
    actor's process does not import what only samplers and train workers use."""
    imports = "rlft.job, rlft.distributed.scorer, rlft.feedback.labels_config"
    assert loaded_after(imports, ("diffusers", "peft", "ray.train")) == []


def test_starting_the_actors_imports_no_diffusers_or_peft():
    """A job starts its actors before it imports the model code, so that the actors' start-up and the
    driver's import overlap; and Train's controller, which unpickles the train function, stays light."""
    imports = "rlft.distributed.launch, rlft.distributed.train_workers, rlft.epoch"
    assert loaded_after(imports, ("diffusers", "peft")) == []


def test_a_ray_runs_driver_imports_no_model_code():
    """The driver of a Ray run owns the loop, the epochs and the checkpoints but no model: the samplers and
    train workers hold it. Its imports took 10 s of a 2-core machine's start-up with the model code, 4 s
    without, and the model code's libraries about 0.3 GB of its memory."""
    imports = "rlft.distributed.ray_loop, rlft.loop, rlft.algorithms.registry"
    assert loaded_after(imports, ("diffusers", "peft", "transformers")) == []
