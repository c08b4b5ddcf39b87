"""Train state, the jitted train step, and `train_and_evaluate`: the training loop of siamjax.

Data parallel over every device: batches sharded along the mesh axis `data`, state replicated, one
compiled step with the state donated. A run in a workdir that holds checkpoints resumes from the
latest one (step, parameters, optimiser state, BatchNorm statistics, RNG and, through the step, the
data position), and continues exactly as an uninterrupted run would.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import time
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from absl import logging
from clu import metric_writers
from flax.training import train_state

from siamjax import augment as augment_lib
from siamjax import checkpointing, evaluate, faults, losses, models, parallel
from siamjax.errors import NonFiniteError, Preempted, UserError
from siamjax.input_pipeline import Data, TrainData

# Config keys that define the network and its input: a checkpoint is only valid under the same.
MODEL_KEYS = ("model", "image_height", "image_width")
COMPUTE_ONLY_MODEL_KEYS = ("conv_impl",)


class TrainState(train_state.TrainState):
    """Flax TrainState plus BatchNorm statistics and the RNG key (raw uint32 key data)."""

    batch_stats: Any = None
    rng: jax.Array | None = None


OPTIMIZERS = ("adagrad", "adam", "adamw", "sgd")
LR_SCHEDULES = ("constant", "cosine")


def learning_rate_schedule(config: ml_collections.ConfigDict, num_steps: int) -> optax.Schedule:
    """Constant (the design) or linear warm-up then cosine decay to 0 over `num_steps`."""
    if config.lr_schedule == "constant":
        return optax.constant_schedule(config.learning_rate)
    if config.lr_schedule == "cosine":
        return optax.warmup_cosine_decay_schedule(0.0, config.learning_rate,
                                                  max(int(config.warmup_steps), 1),
                                                  max(num_steps, int(config.warmup_steps) + 1))
    raise UserError(f"config.lr_schedule={config.lr_schedule!r}; use one of {LR_SCHEDULES}.")


def make_optimizer(config: ml_collections.ConfigDict,
                   num_steps: int = 1) -> optax.GradientTransformation:
    """The optimiser `config.optimizer` names; Adagrad starts its accumulator as PyTorch does."""
    lr = learning_rate_schedule(config, num_steps)
    if config.optimizer == "adagrad":
        opt = optax.adagrad(lr, initial_accumulator_value=config.adagrad_initial_accumulator,
                            eps=config.adagrad_eps)
    elif config.optimizer == "adam":
        opt = optax.adam(lr)
    elif config.optimizer == "adamw":
        return optax.adamw(lr, weight_decay=config.weight_decay)
    elif config.optimizer == "sgd":
        opt = optax.sgd(lr, momentum=0.9, nesterov=True)
    else:
        raise UserError(f"config.optimizer={config.optimizer!r}; use one of {OPTIMIZERS}.")
    if config.weight_decay:
        return optax.chain(optax.add_decayed_weights(config.weight_decay), opt)
    return opt


def create_train_state(config: ml_collections.ConfigDict, model: nn.Module,
                       rng: jax.Array, num_steps: int = 1) -> TrainState:
    """Fresh state for `model` on images of config.image_height x config.image_width; `num_steps`
    is the length of the learning-rate schedule (the state's structure does not depend on it)."""
    init_rng, seed_rng = jax.random.split(rng)
    # The training RNG is threefry whatever `rng` is: its bits do not depend on sharding.
    state_rng = jax.random.key(jax.random.randint(seed_rng, (), 0, 2**31 - 1))
    dummy = jnp.zeros((2, config.image_height, config.image_width, 1), jnp.uint8)
    variables = model.init({"params": init_rng}, dummy, dummy, train=False)
    return TrainState.create(apply_fn=model.apply, params=variables["params"],
                             batch_stats=variables.get("batch_stats", {}),
                             tx=make_optimizer(config, num_steps),
                             rng=jax.random.key_data(state_rng))


def train_step(state: TrainState, batch: dict[str, jax.Array], *,
               config: ml_collections.ConfigDict) -> tuple[TrainState, dict[str, jax.Array]]:
    """One optimiser step on `config.loss` over a pair (or triplet) batch; device-side metric sums.

    batch: image_a, image_b uint8 [B, H, W, 1]; label int32 [B] (1 = genuine pair); for 'triplet'
    also image_c, the negative of the anchor image_a (image_b is its positive, label 1).
    'contrastive' and 'triplet' train the encoder on embedding distances alone; a BCE term on the
    stopped embeddings adds gradients only to the distance head's two scalars, so that its logit
    (the score that evaluation and verification use) is calibrated as training goes. The loss
    reported is the sum of both terms; accuracy is the head's, over every pair it scored (2B for
    triplets: (anchor, positive) genuine, (anchor, negative) forged).
    """
    losses.check_loss(config.loss, config.model.combine)
    rng = jax.random.fold_in(jax.random.wrap_key_data(state.rng), state.step)
    a, b, label = batch["image_a"], batch["image_b"], batch["label"]
    c = batch.get("image_c")  # The triplet's negative.
    aug = config.augment
    if augment_lib.enabled(aug):
        ka, kb = jax.random.split(rng)
        a = augment_lib.augment(a.astype(jnp.float32) / 255.0, ka, aug)
        b = augment_lib.augment(b.astype(jnp.float32) / 255.0, kb, aug)
        if c is not None:
            kc = jax.random.fold_in(rng, 2)
            c = augment_lib.augment(c.astype(jnp.float32) / 255.0, kc, aug)

    def loss_fn(params):
        variables = {"params": params, "batch_stats": state.batch_stats}
        apply = functools.partial(state.apply_fn, variables, train=True, mutable=["batch_stats"])
        if config.loss == "bce":
            logits, updates = apply(a, b)
            loss = jnp.mean(losses.bce_with_logits(logits, label))
            return loss, (logits, label, updates["batch_stats"])
        if config.loss == "contrastive":
            (e1, e2), updates = apply(a, b, method="embed_pairs")
            loss = jnp.mean(losses.contrastive(e1, e2, label, config.loss_margin))
            pair_label = label
        else:
            (ea, ep, en), updates = apply(a, b, c, method="embed_triplets")
            loss = jnp.mean(losses.triplet(ea, ep, en, config.loss_margin))
            e1, e2 = jnp.concatenate([ea, ea]), jnp.concatenate([ep, en])
            pair_label = jnp.concatenate([jnp.ones_like(label), jnp.zeros_like(label)])
        # Calibration: the head's logit on stopped embeddings trains the head's scalars only.
        logits = state.apply_fn({"params": params}, jax.lax.stop_gradient(e1),
                                jax.lax.stop_gradient(e2), method="score")
        loss = loss + jnp.mean(losses.bce_with_logits(logits, pair_label))
        return loss, (logits, pair_label, updates["batch_stats"])

    (loss, (logits, label, batch_stats)), grads = jax.value_and_grad(loss_fn, has_aux=True)(
        state.params)
    new = state.apply_gradients(grads=grads, batch_stats=batch_stats)
    # A NaN/Inf step changes nothing but the step counter (siamjax.faults); the loop decides.
    finite = faults.all_finite(loss, grads, new.params, batch_stats)
    state = new.replace(params=faults.keep_if_finite(finite, new.params, state.params),
                        opt_state=faults.keep_if_finite(finite, new.opt_state, state.opt_state),
                        batch_stats=faults.keep_if_finite(finite, new.batch_stats,
                                                          state.batch_stats))
    n = jnp.where(finite, jnp.asarray(label.shape[0], jnp.float32), 0.0)
    correct = jnp.sum(((logits > 0).astype(jnp.int32) == label).astype(jnp.float32))
    return state, {"loss_sum": jnp.where(finite, loss * n, 0.0),
                   "correct": jnp.where(finite, correct, 0.0), "count": n,
                   **faults.step_flags(finite, new.step)}


def state_sharding(mesh: jax.sharding.Mesh) -> jax.sharding.NamedSharding:
    """One sharding for the whole state: replicated, since parameters are small next to a batch's
    activations (a pytree prefix, so it fits any state structure)."""
    return parallel.replicated(mesh)


def compile_train_step(config: ml_collections.ConfigDict, mesh: jax.sharding.Mesh,
                       shardings: jax.sharding.Sharding):
    """The jitted step: state donated, batch sharded along `data`, metrics replicated."""
    batch_sharding = parallel.data_sharding(mesh)
    return jax.jit(functools.partial(train_step, config=config), donate_argnums=0,
                   in_shardings=(shardings, batch_sharding),
                   out_shardings=(shardings, parallel.replicated(mesh)))


def init_state_on_mesh(config: ml_collections.ConfigDict, model: nn.Module,
                       mesh: jax.sharding.Mesh,
                       num_steps: int = 1) -> tuple[TrainState, jax.sharding.Sharding]:
    """Initialises the state directly on the mesh, replicated.

    Parameters are drawn with the 'rbg' PRNG: XLA:CPU takes ~15 s to compile threefry for the
    many initialiser shapes (2.5 s with rbg). The training RNG stays threefry (see train_step),
    whose bits do not depend on how a computation is sharded.
    """
    sharding = state_sharding(mesh)
    init = jax.jit(lambda k: create_train_state(config, model, k, num_steps),
                   out_shardings=sharding)
    return init(jax.random.key(config.seed, impl="rbg")), sharding


# ---------------------------------------------------------------------------------------------
# Workdir checks


def _model_fingerprint(config: ml_collections.ConfigDict) -> dict[str, Any]:
    d = json.loads(config.to_json_best_effort())
    out = {k: d[k] for k in MODEL_KEYS}
    # How convolutions are computed does not change the model (siamjax.conv).
    out["model"] = {k: v for k, v in out["model"].items() if k not in COMPUTE_ONLY_MODEL_KEYS}
    return out


def check_model_matches(config: ml_collections.ConfigDict, workdir: str) -> None:
    """Raises if `workdir` holds a run of another model than `config.model` (or of unknown one)."""
    path = os.path.join(workdir, "config.json")
    mine = _model_fingerprint(config)
    if os.path.exists(path):
        with open(path) as f:
            theirs = _model_fingerprint(ml_collections.ConfigDict(json.load(f)))
        diffs = [f"{k}: {theirs[k]} there, {mine[k]} now" for k in MODEL_KEYS
                 if theirs[k] != mine[k]]
        if diffs:
            raise UserError(f"workdir {workdir} holds a checkpoint of a different model ("
                            + "; ".join(diffs) + "): use another --workdir.")
    elif os.path.isdir(os.path.join(workdir, "checkpoints")) and os.listdir(
            os.path.join(workdir, "checkpoints")):
        raise UserError(f"workdir {workdir} holds checkpoints but no config.json: cannot tell "
                        "which model they are of; use another --workdir.")


def prepare_workdir(config: ml_collections.ConfigDict, workdir: str) -> None:
    """Makes sure `workdir` is writable and, if it holds a run, that it is of the same model.

    Nothing in the workdir is touched before these checks pass.
    """
    try:
        os.makedirs(workdir, exist_ok=True)
        probe = os.path.join(workdir, f".write_test.{jax.process_index()}")
        with open(probe, "w") as f:
            f.write("ok")
        os.remove(probe)
    except OSError as e:
        raise UserError(f"workdir {workdir} cannot be written: {e.strerror or e}.") from e
    check_model_matches(config, workdir)
    path = os.path.join(workdir, "config.json")
    if jax.process_index() == 0:
        # Written aside and renamed: another process (or eval.py) never reads half a file.
        with open(path + ".tmp", "w") as f:
            f.write(config.to_json_best_effort(indent=2))
        os.replace(path + ".tmp", path)


# ---------------------------------------------------------------------------------------------
# The loop


def _num_steps(config: ml_collections.ConfigDict, steps_per_epoch: int) -> int:
    if config.num_train_steps > 0:
        return int(config.num_train_steps)
    return int(config.num_epochs * steps_per_epoch)


def _validate(scorer: evaluate.Scorer, state: TrainState, data: Data) -> dict[str, float]:
    pairs = data.eval_pairs["validation"]
    variables = {"params": state.params, "batch_stats": state.batch_stats}
    scores = evaluate.sigmoid(scorer.logits(variables, data.catalog.images, pairs))
    return evaluate.metrics_for(scores, pairs.kind, data.catalog.writer[pairs.a], None,
                                data.prior_positive)


def _fmt_time(seconds: float) -> str:
    m, s = divmod(int(seconds), 60)
    h, m = divmod(m, 60)
    return f"{h}h{m:02d}m{s:02d}s" if h else f"{m}m{s:02d}s"


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
    """Trains (or resumes) in `workdir`; returns the final summary (also in summary.json).

    Raises `Preempted` after checkpointing the current step on SIGTERM, `NonFiniteError` on a
    NaN/Inf step (unless config.skip_nonfinite_steps), `UserError` on bad input or storage.
    """
    with faults.PreemptionWatcher() as preemption:
        return _train_and_evaluate(config, workdir, preemption)


def _train_and_evaluate(config: ml_collections.ConfigDict, workdir: str,
                        preemption: faults.PreemptionWatcher) -> dict[str, Any]:
    parallel.maybe_initialize_distributed()
    losses.check_loss(config.loss, config.model.combine)
    workdir = os.path.abspath(workdir)
    prepare_workdir(config, workdir)
    mesh = parallel.make_mesh()
    parallel.check_batch_size(config.batch_size, mesh)
    logging.info("devices: %d (%s), processes: %d", mesh.devices.size,
                 jax.devices()[0].platform, jax.process_count())

    data = Data(config, workdir)
    if "validation" not in data.eval_pairs:
        raise UserError("the validation split is empty: set config.split so that it has writers.")
    train_data = TrainData(data, config)
    num_steps = _num_steps(config, train_data.steps_per_epoch)

    model = models.create_model(config.model)
    state, shardings = init_state_on_mesh(config, model, mesh, num_steps)
    ckpt = checkpointing.Checkpointer(workdir, keep=config.keep_checkpoints)
    start, skipped_before = 0, 0
    if ckpt.latest_step():
        start, state, meta = ckpt.restore_latest_good(
            checkpointing.abstract_with_sharding(state, shardings))
        skipped_before = int(meta.get("skipped_nonfinite_steps") or 0)
        logging.info("resumed from the checkpoint of step %d", start)
    else:
        logging.info("model: %s encoder, %d parameters", config.model.encoder,
                     sum(x.size for x in jax.tree.leaves(state.params)))

    step_fn = compile_train_step(config, mesh, shardings)
    scorer = evaluate.Scorer(model, mesh, config.eval_batch_size)
    writer = metric_writers.create_default_writer(workdir, just_logging=jax.process_index() > 0)
    batches = train_data.batches(start)
    logging.info("training steps %d..%d (%d per epoch, batch %d)", start, num_steps,
                 train_data.steps_per_epoch, config.batch_size)

    sums, t_last, step_last, t_start = None, time.perf_counter(), start, time.perf_counter()
    # Where the loop's wall time goes. The step is dispatched asynchronously, so the host prepares
    # the next batch while the device computes; `input` is the host's time in the pipeline
    # (waiting for tf.data, sharding the batch): while it stays well below the step time, the
    # device never waits for data.
    spent = {"input_s": 0.0, "validation_s": 0.0, "checkpoint_s": 0.0}
    input_last = 0.0
    val: dict[str, float] = {}
    guard = faults.NonFiniteGuard(config.skip_nonfinite_steps, skipped_before)
    saved = start or None
    for step in range(start + 1, num_steps + 1):
        with _timed(spent, "input_s"):
            batch = parallel.to_global(next(batches), mesh)
        state, m = step_fn(state, batch)
        m = guard.add(m)
        sums = m if sums is None else jax.tree.map(jnp.add, sums, m)
        last = step == num_steps
        stop = preemption.should_stop(step % config.log_every_steps == 0)
        evaluated = step % config.eval_every_steps == 0 or last
        save = step % config.checkpoint_every_steps == 0 or last or evaluated or stop
        if step % config.log_every_steps == 0 or last or save:
            _check_finite(guard, step, saved, ckpt, writer)
        if step % config.log_every_steps == 0 or last:
            s = jax.device_get(sums)
            now = time.perf_counter()
            rate = (step - step_last) / max(now - t_last, 1e-9)
            scalars = {"train_loss": s["loss_sum"] / s["count"],
                       "train_accuracy": s["correct"] / s["count"], "steps_per_sec": rate,
                       "pairs_per_sec": rate * config.batch_size,
                       "input_fraction": (spent["input_s"] - input_last) / max(now - t_last, 1e-9)}
            input_last = spent["input_s"]
            writer.write_scalars(step, scalars)
            logging.info("step %d/%d: loss %.4f, accuracy %.3f | %.2f steps/s, %.0f pairs/s | "
                         "ETA %s", step, num_steps, scalars["train_loss"],
                         scalars["train_accuracy"], rate, scalars["pairs_per_sec"],
                         _fmt_time((num_steps - step) / max(rate, 1e-9)))
            sums, t_last, step_last = None, now, step
        if evaluated:
            with _timed(spent, "validation_s"):
                val = _validate(scorer, state, data)
            writer.write_scalars(step, {f"val_{k}": v for k, v in val.items()
                                        if isinstance(v, float) and np.isfinite(v)})
            logging.info("step %d validation: EER %.2f%% (skilled), EER %.2f%% (random), "
                         "AUC %.4f, accuracy %.3f", step, 100 * val["eer"],
                         100 * val["eer_random"], val["auc"], val["accuracy"])
        if save:
            meta = {"step": step, "val_threshold": val.get("threshold") if evaluated else None,
                    "prior_positive": data.prior_positive,
                    "val_metrics": val if evaluated else None,
                    "model": _model_fingerprint(config),
                    "skipped_nonfinite_steps": guard.skipped}
            with _timed(spent, "checkpoint_s"):
                ckpt.save(step, state, _jsonable(meta),
                          metrics={checkpointing.BEST_METRIC: val["eer"]} if evaluated else None)
            saved = step
        if stop and not last:
            ckpt.close()
            writer.flush()
            raise Preempted(step, ckpt.directory)
    with _timed(spent, "checkpoint_s"):
        ckpt.wait()
    writer.flush()
    best = ckpt.best_step()
    wall = time.perf_counter() - t_start
    spent["steps_s"] = wall - sum(spent.values())  # Dispatch and compute of the train steps.
    summary = {"final_step": num_steps, "best_step": best, "wall_seconds": wall,
               "time_breakdown": spent, "skipped_nonfinite_steps": guard.skipped,
               "validation": _jsonable(val), "checkpoint_dir": ckpt.directory}
    if jax.process_index() == 0 and val:
        with open(os.path.join(workdir, "summary.json"), "w") as f:
            json.dump(summary, f, indent=1)
    if val:
        logging.info("done: %d steps in %s (steps %.0f s, input %.1f s, validation %.1f s, "
                     "checkpoints %.1f s); final validation EER %.2f%%; best checkpoint: step "
                     "%s; checkpoints in %s", num_steps, _fmt_time(summary["wall_seconds"]),
                     spent["steps_s"], spent["input_s"], spent["validation_s"],
                     spent["checkpoint_s"], 100 * val["eer"], best, ckpt.directory)
    ckpt.close()
    return summary


def _check_finite(guard: faults.NonFiniteGuard, step: int, saved: int | None,
                  ckpt: checkpointing.Checkpointer, writer: Any) -> None:
    """guard.check; when it stops training, the good saves in flight finish first."""
    try:
        guard.check(step, saved, ckpt.directory)
    except NonFiniteError:
        ckpt.close()
        writer.flush()
        raise


@contextlib.contextmanager
def _timed(spent: dict[str, float], key: str):
    """Adds the wall time of the `with` body to spent[key]."""
    t0 = time.perf_counter()
    try:
        yield
    finally:
        spent[key] += time.perf_counter() - t0


def _jsonable(d: Any) -> Any:
    """Floats (NaN -> None) and plain types only, for JSON files and orbax JsonSave."""
    if isinstance(d, dict):
        return {k: _jsonable(v) for k, v in d.items()}
    if isinstance(d, (list, tuple)):
        return [_jsonable(v) for v in d]
    if isinstance(d, (float, np.floating)):
        return None if not np.isfinite(d) else float(d)
    if isinstance(d, np.integer):
        return int(d)
    return d
