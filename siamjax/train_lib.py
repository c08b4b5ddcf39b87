"""The jitted train step and `train_and_evaluate`: the training loop of siamjax.

Data parallel over every device: batches sharded along the mesh axis `data`, state replicated, one
compiled step with the state donated. A run in a workdir that holds checkpoints resumes from the
latest one (step, parameters, optimiser state, BatchNorm statistics, RNG and, through the step, the
data position), and continues exactly as an uninterrupted run would.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
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
from absl import logging
from clu import metric_writers, periodic_actions
from clu import metrics as clu_metrics

from siamjax import augment as augment_lib
from siamjax import (
    checkpointing,
    evaluation,
    faults,
    inference,
    losses,
    metrics,
    models,
    parallel,
)
from siamjax import workdir as workdir_lib
from siamjax.data import Data
from siamjax.errors import NonFiniteError, Preempted, UserError
from siamjax.input_pipeline import INDEX_KEYS, TrainData
from siamjax.train_state import TrainState, create_train_state


def gather_images(images: jax.Array, batch: dict[str, jax.Array]) -> dict[str, jax.Array]:
    """An index batch (index_a, index_b, [index_c], label) -> the image batch it stands for, taken
    from `images` (uint8 [N, H, W, 1], replicated); each device gathers its own rows."""
    out = {k: jnp.take(images, batch[i], axis=0) for k, i in INDEX_KEYS.items() if i in batch}
    index = set(INDEX_KEYS.values())
    return {**out, **{k: v for k, v in batch.items() if k not in index}}


def train_step(
    state: TrainState,
    batch: dict[str, jax.Array],
    images: jax.Array | None = None,
    *,
    config: ml_collections.ConfigDict,
) -> tuple[TrainState, dict[str, jax.Array]]:
    """One optimiser step on `config.loss` over a pair (or triplet) batch.

    Returns the new state and {"train": TrainMetrics (clu running means, on the device), plus the
    non-finite flags of siamjax.faults}.

    batch: image_a, image_b uint8 [B, H, W, 1]; label int32 [B] (1 = genuine pair); for 'triplet'
    also image_c, the negative of the anchor image_a (image_b is its positive, label 1).
    With config.writer_loss_weight > 0 ('bce'), the batch also holds class_a and class_b
    (int32 [B] writer classes, -1 for forgeries) and the loss adds that weight times the writer
    head's cross-entropy on the genuine images (`losses.writer_cross_entropy`).
    An ensemble (config.model.members > 1) trains with 'bce' only: the gradient is that of the sum
    of its members' own losses, so each member learns as if trained alone on the same batches;
    the loss reported is their mean.
    'contrastive' and 'triplet' train the encoder on embedding distances alone; a BCE term on the
    stopped embeddings adds gradients only to the distance head's two scalars, so that its logit
    (the score that evaluation and verification use) is calibrated as training goes. The loss
    reported is the sum of both terms; accuracy is the head's, over every pair it scored (2B for
    triplets: (anchor, positive) genuine, (anchor, negative) forged).

    With `images` (TrainData.device_images), the batch holds int32 [B] indices into it
    (index_a, index_b, index_c) in place of the images.
    """
    losses.check_loss(config.loss, config.model.combine, models.ensemble_size(config.model))
    if images is not None:
        batch = gather_images(images, batch)
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
            # One encoder pass of 2B as in __call__; each ensemble member's head scores its own
            # slice, and its loss is its own (the mean over members is M separate losses).
            (e1, e2), updates = apply(a, b, method="embed_pairs")
            member = state.apply_fn({"params": params}, e1, e2, method="member_logits")  # [B, M]
            per_member = jnp.mean(losses.bce_with_logits(member, label[:, None]), axis=0)  # [M]
            if config.writer_loss_weight > 0:
                # The writer head reads the same embeddings; [M, 2B, classes].
                writer_logits = state.apply_fn(
                    {"params": params}, jnp.concatenate([e1, e2]), method="classify_writer"
                )
                classes = jnp.concatenate([batch["class_a"], batch["class_b"]])
                writer = jax.vmap(losses.writer_cross_entropy, (0, None))(writer_logits, classes)
                per_member += config.writer_loss_weight * writer
            logits = jnp.mean(member, axis=-1)  # The model's score (SiameseNet.score).
            # The members' sum: each member's gradient is exactly the one it would get trained
            # alone, whatever the optimiser (the step reports the mean, below).
            return jnp.sum(per_member), (logits, label, updates.get("batch_stats", {}))
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
        logits = state.apply_fn(
            {"params": params}, jax.lax.stop_gradient(e1), jax.lax.stop_gradient(e2), method="score"
        )
        loss = loss + jnp.mean(losses.bce_with_logits(logits, pair_label))
        return loss, (logits, pair_label, updates.get("batch_stats", {}))

    (loss, (logits, label, batch_stats)), grads = jax.value_and_grad(loss_fn, has_aux=True)(
        state.params
    )
    loss = loss / models.ensemble_size(config.model)  # An ensemble's: the mean of its members'.
    new = state.apply_gradients(grads=grads, batch_stats=batch_stats)
    # A NaN/Inf step changes nothing but the step counter (siamjax.faults); the loop decides.
    finite = faults.all_finite(loss, grads, new.params, batch_stats)
    state = new.replace(
        params=faults.keep_if_finite(finite, new.params, state.params),
        opt_state=faults.keep_if_finite(finite, new.opt_state, state.opt_state),
        batch_stats=faults.keep_if_finite(finite, new.batch_stats, state.batch_stats),
    )
    n = label.shape[0]  # Pairs the head scored.
    train = TrainMetrics.single_from_model_output(
        loss=jnp.full((n,), loss, jnp.float32),
        correct=((logits > 0).astype(jnp.int32) == label).astype(jnp.float32),
        mask=jnp.full((n,), finite),
    )
    return state, {"train": train, **faults.step_flags(finite, new.step)}


# The training loss and the head's accuracy as clu running means: each step's stay on the device
# until a log step fetches them all and merges them on the host (`merge_steps`). Both are per
# scored pair (the loss is the step's mean, so with a fixed batch it is the mean over steps); a
# skipped non-finite step counts in neither. (`Collection.create`, not a subclass: this module's
# postponed annotations would hide the metric types from clu.)
TrainMetrics = clu_metrics.Collection.create(
    loss=clu_metrics.Average.from_output("loss"),
    accuracy=clu_metrics.Average.from_output("correct"),
)


def merge_steps(steps: list[clu_metrics.Collection]) -> clu_metrics.Collection:
    """The steps' metrics fetched in one transfer and merged on the host. Merging them on the
    device as they came is a few eager dispatches per step from the loop's thread, after the
    step call (which XLA:CPU runs in that thread) has returned (`bench/loop_overhead.py`;
    bench/README.md, "Host side")."""
    return functools.reduce(lambda a, b: a.merge(b), jax.device_get(steps))


def state_sharding(mesh: jax.sharding.Mesh) -> jax.sharding.NamedSharding:
    """One sharding for the whole state: replicated, since parameters are small next to a batch's
    activations (a pytree prefix, so it fits any state structure)."""
    return parallel.replicated(mesh)


def compile_train_step(
    config: ml_collections.ConfigDict,
    mesh: jax.sharding.Mesh,
    shardings: jax.sharding.Sharding,
    images: jax.Array | None = None,
):
    """The jitted step, `step(state, batch) -> (state, metrics)`: state donated, batch sharded
    along `data`, metrics replicated. With `images` (replicated on the mesh), batches are index
    batches gathered from them inside the step."""
    replicated = parallel.replicated(mesh)
    in_shardings = (shardings, parallel.data_sharding(mesh))
    step = jax.jit(
        functools.partial(train_step, config=config),
        donate_argnums=0,
        in_shardings=in_shardings if images is None else (*in_shardings, replicated),
        out_shardings=(shardings, replicated),
    )
    return step if images is None else lambda state, batch: step(state, batch, images)


def init_state_on_mesh(
    config: ml_collections.ConfigDict, model: nn.Module, mesh: jax.sharding.Mesh, num_steps: int = 1
) -> tuple[TrainState, jax.sharding.Sharding]:
    """Initialises the state directly on the mesh, replicated.

    Parameters are drawn with the 'rbg' PRNG: XLA:CPU compiles threefry for the many initialiser
    shapes several times slower (bench/README.md, "Figures the code's comments rely on"). The
    training RNG stays threefry (see train_step), whose bits do not depend on how a computation
    is sharded.
    """
    sharding = state_sharding(mesh)
    init = jax.jit(
        lambda k: create_train_state(config, model, k, num_steps), out_shardings=sharding
    )
    return init(jax.random.key(config.seed, impl="rbg")), sharding


# ---------------------------------------------------------------------------------------------
# Workdir checks


def encoder_fingerprint(config: ml_collections.ConfigDict) -> dict:
    """The model fingerprint without the head's keys: what a pretrained encoder must share with
    the config that starts from it (`config.init_from`)."""
    fp = workdir_lib.model_fingerprint(config)
    head_keys = ("head_hidden", "combine", "writer_classes")
    fp["model"] = {k: v for k, v in fp["model"].items() if k not in head_keys}
    return fp


def init_encoder_from(
    state: TrainState, config: ml_collections.ConfigDict, source: str, mesh: jax.sharding.Mesh
) -> TrainState:
    """`state` with its encoder's parameters and BatchNorm statistics taken from the best
    checkpoint of the workdir `source` (pretraining, e.g. on synthetic writers, then fine-tuning
    here); the head and the optimiser start fresh. `source` must hold the same encoder at the
    same input size (the model fingerprint without the head's keys); a resumed run ignores it,
    since its checkpoint already holds the fine-tuned encoder."""
    source_config = workdir_lib.load_config(source)
    mine, theirs = encoder_fingerprint(config), encoder_fingerprint(source_config)
    if mine != theirs:
        raise UserError(
            f"config.init_from={source}: its encoder or input differs from this config's "
            f"({theirs} there, {mine} here)."
        )
    restored = workdir_lib.restore(source_config, source, None, mesh)
    params = dict(state.params)
    params["encoder"] = restored.variables["params"]["encoder"]
    batch_stats = dict(state.batch_stats or {})
    if "encoder" in (restored.variables.get("batch_stats") or {}):
        batch_stats["encoder"] = restored.variables["batch_stats"]["encoder"]
    logging.info("encoder initialised from %s (step %d)", source, restored.step)
    return state.replace(
        params=jax.device_put(params, parallel.replicated(mesh)),
        batch_stats=jax.device_put(batch_stats, parallel.replicated(mesh)),
    )


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
    workdir_lib.check_model_matches(config, workdir)
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


def _validate(scorer: inference.Scorer, state: TrainState, data: Data) -> dict[str, float]:
    """Metrics of the validation pairs at the threshold chosen on them (the one saved with the
    checkpoint for eval.py and siamjax-verify): `siamjax.evaluation.evaluate`, as eval.py's."""
    variables = {"params": state.params, "batch_stats": state.batch_stats}
    scores = inference.TrialScores(scorer, variables, data.catalog.images)
    validation = evaluation.TrialSet(data.trials("validation"), data.catalog.writer, scores)
    return evaluation.evaluate(validation, data.prior_positive).metrics


class _Progress(periodic_actions.ReportProgress):
    """clu's progress report on the log steps: steps/s, percent done, ETA and the share of the wall
    time spent in input, validation and checkpoints (logged as 'Setting work unit notes: ...';
    `steps_per_sec` and `uptime` written as scalars). Adds the rate in pairs, which is what models
    of different batch sizes compare by."""

    def __init__(self, *, pairs_per_step: int, **kwargs):
        super().__init__(every_secs=None, **kwargs)
        self.pairs_per_step = pairs_per_step
        self.pairs_per_sec = float("nan")

    def _apply(self, step: int, t: float) -> None:
        super()._apply(step, t)
        # The base class's rate, from its record of the previous report (reset after this call).
        steps_per_sec = (step - self._previous_step) / (t - self._previous_time)
        self.pairs_per_sec = steps_per_sec * self.pairs_per_step
        if self._writer is not None:
            self._writer.write_scalars(step, {"pairs_per_sec": self.pairs_per_sec})


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
    """Trains (or resumes) in `workdir`; returns the final summary (also in summary.json).

    Setup (`_setup`), then the loop: a train step, then the periodic actions due at that step
    (`_Run.actions`: log, validate, checkpoint), then the end (`_Run.finish`).

    Raises `Preempted` after checkpointing the current step on SIGTERM, `NonFiniteError` on a
    NaN/Inf step (unless config.skip_nonfinite_steps), `UserError` on bad input or storage.
    """
    # The stack closes what the run opens (the input thread) however the run ends.
    with faults.PreemptionWatcher() as preemption, contextlib.ExitStack() as resources:
        run = _setup(config, workdir, resources)
        log, validate, save = run.actions()
        for step in range(run.start + 1, run.num_steps + 1):
            run.train_step(step)
            stop = preemption.should_stop(step % config.log_every_steps == 0)
            if not log(step):  # When due, it checks the flags, waits for the step, reports, logs.
                run.report(step)  # Every step: it times the loop.
            evaluated = validate(step)
            if not save(step) and (evaluated or stop):  # A validated step is also saved.
                run.save(step)
            if stop and step != run.num_steps:
                run.ckpt.close()
                run.writer.flush()
                raise Preempted(step, run.ckpt.directory)
        return run.finish()


@dataclasses.dataclass
class _Run:
    """One training run: what `_setup` made, and what the loop keeps from step to step."""

    config: ml_collections.ConfigDict
    workdir: str
    data: Data
    state: TrainState
    step_fn: Any  # compile_train_step's.
    batches: parallel.GlobalBatches
    scorer: inference.Scorer
    ckpt: checkpointing.Checkpointer
    writer: Any  # clu metric writer.
    report: _Progress
    guard: faults.NonFiniteGuard
    start: int
    num_steps: int
    t_start: float
    # Where the loop's wall time goes. `input` is the time the loop waited for a batch that the
    # input thread had not made yet: a stall of the device, near zero while the pipeline keeps
    # ahead of the step.
    spent: dict[str, float] = dataclasses.field(
        default_factory=lambda: dict.fromkeys(
            ("first_step_s", "input_s", "validation_s", "checkpoint_s"), 0.0
        )
    )
    steps_metrics: list[Any] = dataclasses.field(default_factory=list)  # Since the last log.
    val: dict[str, Any] = dataclasses.field(default_factory=dict)  # The last validation's.
    validated_at: int | None = None
    saved: int | None = None  # The newest step saved.

    def actions(self) -> tuple[periodic_actions.PeriodicCallback, ...]:
        """The periodic actions, each due every so many steps and at the last step: logging,
        validation, checkpoints. Each returns whether it ran."""
        cfg, last = self.config, [self.num_steps]

        def every(steps: int, fn) -> periodic_actions.PeriodicCallback:
            return periodic_actions.PeriodicCallback(
                every_steps=steps, on_steps=last, callback_fn=lambda step, t: fn(step)
            )

        return (
            every(cfg.log_every_steps, self.log),
            every(cfg.eval_every_steps, self.validate),
            every(cfg.checkpoint_every_steps, self.save),
        )

    def train_step(self, step: int) -> None:
        with _timed(self.spent, "input_s", self.report):
            batch = next(self.batches)
        if step == self.start + 1:
            # Compilation and one step, waited for: what a longer run amortises, kept apart from
            # the steps' time so that the loop's sustained rate can be read off summary.json.
            with _timed(self.spent, "first_step_s", self.report):
                self.state, m = self.step_fn(self.state, batch)
                jax.block_until_ready(m)
        else:
            self.state, m = self.step_fn(self.state, batch)
        self.steps_metrics.append(self.guard.add(m)["train"])

    def check_finite(self, step: int) -> None:
        """guard.check; when it stops training, the good saves in flight finish first."""
        _check_finite(self.guard, step, self.saved, self.ckpt, self.writer)

    def log(self, step: int) -> None:
        self.check_finite(step)
        # Waits for the step: the report's rate is of finished steps.
        means = merge_steps(self.steps_metrics).compute()
        self.report(step)  # Reports on the same steps (every log_every_steps, and the last).
        scalars = {"train_loss": float(means["loss"]), "train_accuracy": float(means["accuracy"])}
        self.writer.write_scalars(step, scalars)
        logging.info(
            "step %d/%d: loss %.4f, accuracy %.3f | %.0f pairs/s",
            step,
            self.num_steps,
            scalars["train_loss"],
            scalars["train_accuracy"],
            self.report.pairs_per_sec,
        )
        self.steps_metrics = []

    def validate(self, step: int) -> None:
        self.check_finite(step)  # A diverged model is stopped before it is validated.
        with _timed(self.spent, "validation_s", self.report):
            val = _validate(self.scorer, self.state, self.data)
        self.val, self.validated_at = val, step
        self.writer.write_scalars(
            step,
            {f"val_{k}": v for k, v in val.items() if isinstance(v, float) and np.isfinite(v)},
        )
        logging.info(
            "step %d validation: EER %.2f%% (skilled), EER %.2f%% (random), "
            "AUC %.4f, accuracy %.3f",
            step,
            100 * val["eer"],
            100 * val["eer_random"],
            val["auc"],
            val["accuracy"],
        )

    def save(self, step: int) -> None:
        """Checkpoints `step`, with the validation of this step when there was one."""
        self.check_finite(step)
        evaluated = self.validated_at == step
        meta = {
            "step": step,
            "val_threshold": self.val.get("threshold") if evaluated else None,
            "prior_positive": self.data.prior_positive,
            "val_metrics": self.val if evaluated else None,
            "model": workdir_lib.model_fingerprint(self.config),
            "skipped_nonfinite_steps": self.guard.skipped,
        }
        with _timed(self.spent, "checkpoint_s", self.report):
            self.ckpt.save(
                step,
                self.state,
                metrics.jsonable(meta),
                metrics={checkpointing.BEST_METRIC: self.val["eer"]} if evaluated else None,
            )
        self.saved = step

    def finish(self) -> dict[str, Any]:
        """Waits for the last save; writes summary.json; logs where the time went."""
        with _timed(self.spent, "checkpoint_s", self.report):
            self.ckpt.wait()
        self.writer.flush()
        best = self.ckpt.best_step()
        spent, val = self.spent, self.val
        wall = time.perf_counter() - self.t_start
        spent["steps_s"] = wall - sum(spent.values())  # Dispatch and compute of the train steps.
        summary = {
            "final_step": self.num_steps,
            "best_step": best,
            "wall_seconds": wall,
            "time_breakdown": spent,
            "skipped_nonfinite_steps": self.guard.skipped,
            "validation": metrics.jsonable(val),
            "checkpoint_dir": self.ckpt.directory,
        }
        if jax.process_index() == 0 and val:
            with open(os.path.join(self.workdir, "summary.json"), "w") as f:
                json.dump(summary, f, indent=1)
        if val:
            logging.info(
                "done: %d steps in %s (first step and its compilation %.1f s, steps %.0f s, "
                "input %.1f s, validation %.1f s, checkpoints %.1f s); final validation EER "
                "%.2f%%; best checkpoint: step %s; checkpoints in %s",
                self.num_steps,
                datetime.timedelta(seconds=round(wall)),
                spent["first_step_s"],
                spent["steps_s"],
                spent["input_s"],
                spent["validation_s"],
                spent["checkpoint_s"],
                100 * val["eer"],
                best,
                self.ckpt.directory,
            )
        self.ckpt.close()
        return summary


def _setup(
    config: ml_collections.ConfigDict, workdir: str, resources: contextlib.ExitStack
) -> _Run:
    """Everything before the first step: checks, data, state (fresh or resumed), the compiled
    step, the input thread (entered into `resources`), checkpoints, writer, progress report."""
    parallel.maybe_initialize_distributed()
    losses.check_loss(config.loss, config.model.combine, models.ensemble_size(config.model))
    workdir = os.path.abspath(workdir)
    prepare_workdir(config, workdir)
    mesh = parallel.make_mesh()
    parallel.check_batch_size(config.batch_size, mesh)
    logging.info(
        "devices: %d (%s), processes: %d",
        mesh.devices.size,
        jax.devices()[0].platform,
        jax.process_count(),
    )

    data = Data(config)
    data.save(workdir)
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
            checkpointing.abstract_with_sharding(state, shardings)
        )
        skipped_before = int(meta.get("skipped_nonfinite_steps") or 0)
        logging.info("resumed from the checkpoint of step %d", start)
    else:
        logging.info(
            "model: %s encoder, %d parameters",
            config.model.encoder,
            sum(x.size for x in jax.tree.leaves(state.params)),
        )
        if config.init_from:
            state = init_encoder_from(state, config, config.init_from, mesh)

    # Global batches made ahead in a thread, so that the host's share of a step overlaps the
    # step even where the step call blocks (XLA:CPU runs it in the calling thread). Started
    # here, the pipeline's start-up overlaps the setup below.
    batches = resources.enter_context(
        parallel.GlobalBatches(train_data.batches(start), mesh, size=2)
    )
    step_fn = compile_train_step(config, mesh, shardings, train_data.device_images(mesh))
    scorer = inference.Scorer(model, mesh, config.eval_batch_size)
    writer = metric_writers.create_default_writer(workdir, just_logging=jax.process_index() > 0)
    logging.info(
        "training steps %d..%d (%d per epoch, batch %d, pairs gathered on the %s)",
        start,
        num_steps,
        train_data.steps_per_epoch,
        config.batch_size,
        "device" if train_data.on_device else "host",
    )

    t_start = time.perf_counter()
    report = _Progress(
        num_train_steps=num_steps,
        writer=writer,
        every_steps=config.log_every_steps,
        pairs_per_step=config.batch_size,
    )
    report(start)  # Starts its clock (a first call never reports).
    return _Run(
        config=config,
        workdir=workdir,
        data=data,
        state=state,
        step_fn=step_fn,
        batches=batches,
        scorer=scorer,
        ckpt=ckpt,
        writer=writer,
        report=report,
        guard=faults.NonFiniteGuard(config.skip_nonfinite_steps, skipped_before),
        start=start,
        num_steps=num_steps,
        t_start=t_start,
        saved=start or None,
    )


def _check_finite(
    guard: faults.NonFiniteGuard,
    step: int,
    saved: int | None,
    ckpt: checkpointing.Checkpointer,
    writer: Any,
) -> None:
    """guard.check; when it stops training, the good saves in flight finish first."""
    try:
        guard.check(step, saved, ckpt.directory)
    except NonFiniteError:
        ckpt.close()
        writer.flush()
        raise


@contextlib.contextmanager
def _timed(spent: dict[str, float], key: str, report: periodic_actions.ReportProgress):
    """Adds the wall time of the `with` body to spent[key] (for summary.json) and to the report's
    share of that part ('validation' for 'validation_s')."""
    t0 = time.perf_counter()
    try:
        with report.timed(key.removesuffix("_s"), wait_jax_async_dispatch=False):
            yield
    finally:
        spent[key] += time.perf_counter() - t0
