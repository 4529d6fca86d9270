"""Fine-tuning and tuning in background threads for the app: the same workflows as the CLI's ``train`` and
``tune``, with fields the Training page polls."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field

from core.evaluate import Estimate
from core.train import EpochMetrics, TrainProgress
from workbench.tuning import TuneConfig, TuneProgress, TuneReport, tune
from workbench.workflows import train_run
from workbench.workspace import WorkspaceSpec


@dataclass
class TrainingJob:
    """One run being trained; ``phase``, progress counters and ``history`` update while it runs."""

    run: str
    spec: WorkspaceSpec
    phase: str = "starting"
    epoch: int = 0
    step: int = 0
    steps: int = 1
    featurized: int = 0
    to_featurize: int = 0
    history: list[EpochMetrics] = field(default_factory=list)
    #: The SVM's balanced pair accuracy (train, test) with 95 % intervals, once fitted.
    pair_accuracy: tuple[Estimate, Estimate] | None = None
    error: str | None = None
    done: bool = False
    #: ``time.monotonic()`` when the job was created (elapsed time and the estimate of what is left).
    started: float = field(default_factory=time.monotonic)

    @property
    def epochs(self) -> int:
        return self.spec.config.train.epochs

    @property
    def fraction(self) -> float:
        """Share of the whole job done: fine-tuning steps (70 %), featurizing images (25 %, 95 % for a 0-epoch
        run, which only featurizes), fitting the rankers (the rest)."""
        if self.done:
            return 1.0
        train_share = 0.7 if self.epochs else 0.0
        total = max(1, self.epochs * self.steps)
        training = min(1.0, ((max(self.epoch, 1) - 1) * self.steps + self.step) / total) if self.epochs else 1.0
        if self.phase.startswith("fitting"):
            return 0.95
        featurizing = self.featurized / self.to_featurize if self.to_featurize else 0.0
        return min(1.0, train_share * training + (0.95 - train_share) * featurizing)

    @property
    def status(self) -> str:
        """One line for the progress bar: the phase with its own counter (epoch and step, or images)."""
        if self.error:
            return f"run {self.run}: failed"
        if self.done:
            return f"run {self.run}: done"
        if self.phase == "fine-tuning" and self.epochs and self.epoch == 0:
            return f"run {self.run}: fine-tuning, epoch 1/{self.epochs}, starting"
        if self.phase == "fine-tuning" and self.epochs:
            return (
                f"run {self.run}: fine-tuning, epoch {max(self.epoch, 1)}/{self.epochs}, step {self.step}/{self.steps}"
            )
        if self.phase == "fine-tuning":
            return f"run {self.run}: 0 epochs, keeping the pretrained weights"
        if self.phase.startswith("featurizing"):
            counted = f": {self.featurized}/{self.to_featurize} images" if self.to_featurize else " (loading the model)"
            return f"run {self.run}: {self.phase}{counted}"
        return f"run {self.run}: {self.phase}"

    def timing(self, now: float | None = None) -> str:
        """Elapsed time and, once some of the job is done, about how long the rest takes at the same pace."""
        elapsed = (time.monotonic() if now is None else now) - self.started
        shown = f"{_minutes(elapsed)} elapsed"
        if self.done or not 0.02 <= self.fraction < 1.0:
            return shown
        return f"{shown}, about {_minutes(elapsed * (1 - self.fraction) / self.fraction)} left"

    def _on_step(self, event: TrainProgress) -> None:
        self.epoch, self.step, self.steps = event.epoch, event.step, event.steps
        if event.metrics is not None:
            self.history.append(event.metrics)

    def _on_featurize(self, done: int, total: int) -> None:
        self.featurized, self.to_featurize = done, total

    def _on_phase(self, phase: str) -> None:
        self.phase = phase

    def run_now(self) -> None:
        """Train, featurize and fit in this thread; errors end up in ``error`` (the run keeps its last epoch)."""
        try:
            trained = train_run(self.spec, self.run, self._on_step, self._on_featurize, on_phase=self._on_phase)
            svm = next((item for item in trained.fitted if item.name == "svm"), None)
            if svm is not None and svm.train_pairs is not None and svm.test_pairs is not None:
                self.pair_accuracy = (svm.train_pairs.balanced_accuracy, svm.test_pairs.balanced_accuracy)
        except Exception as err:  # shown on the page
            self.error = f"{type(err).__name__}: {err}"
            self.phase = "failed"
        finally:
            self.done = True


def _minutes(seconds: float) -> str:
    """``m:ss`` (``h:mm:ss`` past an hour)."""
    whole = round(max(0.0, seconds))
    hours, rest = divmod(whole, 3600)
    return f"{hours}:{rest // 60:02d}:{rest % 60:02d}" if hours else f"{rest // 60}:{rest % 60:02d}"


@dataclass
class TuneJob:
    """One ``tune`` search; ``status`` and ``fraction`` (of the time budget) update while it runs."""

    spec: WorkspaceSpec
    config: TuneConfig
    status: str = "starting"
    fraction: float = 0.0
    report: TuneReport | None = None
    error: str | None = None
    done: bool = False

    def _on_progress(self, event: TuneProgress) -> None:
        self.status = f"{event.text} · {_minutes(event.elapsed_s)} of {_minutes(event.budget_s)}"
        self.fraction = event.fraction

    def run_now(self) -> None:
        """Tune in this thread; errors end up in ``error``."""
        try:
            self.report = tune(self.spec, self.config, self._on_progress)
            self.fraction = 1.0
        except Exception as err:  # shown on the page
            self.error = f"{type(err).__name__}: {err}"
            self.status = "failed"
        finally:
            self.done = True


class JobBoard:
    """The training jobs of one server process, by workdir and run name, and one tune job per workdir."""

    def __init__(self) -> None:
        self._jobs: dict[tuple[str, str], TrainingJob] = {}
        self._tunes: dict[str, TuneJob] = {}
        self._lock = threading.Lock()

    def start_tune(self, spec: WorkspaceSpec, config: TuneConfig) -> TuneJob:
        """Start ``tune`` for ``spec``'s dataset and condition, or return the one still running."""
        key = str(spec.layout.root.resolve())
        with self._lock:
            job = self._tunes.get(key)
            if job is None or job.done:
                job = TuneJob(spec, config)
                self._tunes[key] = job
                threading.Thread(target=job.run_now, name="tune", daemon=True).start()
        return job

    def tune_job(self, spec: WorkspaceSpec) -> TuneJob | None:
        """The latest tune job of ``spec``'s dataset and condition, if one was started in this process."""
        with self._lock:
            return self._tunes.get(str(spec.layout.root.resolve()))

    def start(self, spec: WorkspaceSpec, run: str) -> TrainingJob:
        """Start a job for ``run`` in ``spec``'s workdir, or return the one still running."""
        spec.with_run(run)  # validates the name before anything starts
        key = (str(spec.layout.root.resolve()), run)
        with self._lock:
            job = self._jobs.get(key)
            if job is None or job.done:
                job = TrainingJob(run, spec)
                self._jobs[key] = job
                threading.Thread(target=job.run_now, name=f"train-{run}", daemon=True).start()
        return job

    def jobs(self, spec: WorkspaceSpec) -> list[TrainingJob]:
        """Jobs of ``spec``'s dataset and condition, oldest first."""
        root = str(spec.layout.root.resolve())
        with self._lock:
            return [job for (job_root, _), job in self._jobs.items() if job_root == root]
