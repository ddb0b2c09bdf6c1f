"""``logger=mlflow``: runs in an MLflow tracking store; a sweep's jobs are child runs of one parent run.

By default the store is a SQLite database in the output root (``mlflow ui --backend-store-uri
sqlite:///outputs/mlflow.db`` shows it) with artifacts beside it in OUTPUT_ROOT/mlartifacts;
``logger.mlflow.tracking_uri`` points at any other store or server. A new experiment's artifacts go beside
a SQLite database (DB_FOLDER/mlartifacts), to OUTPUT_ROOT/mlartifacts with a database server, into a file
store's own folder, and where a tracking server says: never into ./mlruns of the working folder, MLflow's
own default.

A resumed run logs each metric's steps after the last one the store holds: MLflow cannot delete a value, so
a step logged before a hard kill and trained again keeps its first value (the same value: a resumed run
trains bit for bit as the uninterrupted one).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Optional

from autoenc_cli.errors import ConfigError, UserError
from autoenc_cli.folder_layout import FIGURES, REPORT_HTML, SUMMARY_CSV, SweepLayout
from autoenc_cli.io import read_json, write_json
from autoenc_cli.loggers.base import Logger, LoggerConfig, RunContext
from autoenc_cli.registry import register

# Its files: in the output root (the default store, its artifacts), and in a sweep or study folder (the
# record of the sweep's parent run); the lock serialises creating either, in whichever folder it is.
MLFLOW_DB, MLARTIFACTS, SWEEP_RECORD, LOCK = "mlflow.db", "mlartifacts", "mlflow.json", ".mlflow.lock"

# MLflow's limits: parameters per log_batch call, and a parameter value's length.
PARAMS_PER_BATCH, PARAM_VALUE_LENGTH = 100, 6000
STATUS = {"completed": "FINISHED", "failed": "FAILED", "interrupted": "KILLED"}


@dataclass
class MLflowConfig(LoggerConfig):
    module: ClassVar[str] = "mlflow"
    extra: ClassVar[str] = "mlflow"
    name: str = "mlflow"
    tracking_uri: Optional[str] = None  # null: sqlite:///OUTPUT_ROOT/mlflow.db (a local SQLite store)
    experiment: str = "autoenc"  # the MLflow experiment the runs go to (made when missing)
    # where a new experiment keeps artifacts (figures); null: see default_artifact_location
    artifact_location: Optional[str] = None

    def check(self) -> None:
        super().check()
        if self.tracking_uri and "://" in self.tracking_uri:
            scheme = self.tracking_uri.partition("://")[0].partition("+")[0]  # postgresql+psycopg2://
            if scheme not in TRACKING_SCHEMES:
                raise ConfigError(
                    "tracking_uri", self.tracking_uri, f"give a {', '.join(TRACKING_SCHEMES)} URI, or a local folder"
                )


# The tracking stores MLflow opens (a URI without a scheme is a local folder: MLflow's file store).
TRACKING_SCHEMES = ("sqlite", "http", "https", "file", "postgresql", "mysql", "mssql", "databricks")


def check_server_answers(uri: str) -> None:
    """A tracking server that does not answer is one line in seconds (MLflow's own client retries for minutes)."""
    import urllib.error
    import urllib.request

    try:
        urllib.request.urlopen(f"{uri.rstrip('/')}/health", timeout=10).close()
    except urllib.error.HTTPError:
        pass  # it answered (a server behind a proxy may have no /health)
    except (urllib.error.URLError, OSError) as error:
        reason = getattr(error, "reason", error)
        raise UserError(
            f"logger=mlflow: the tracking server {uri} does not answer ({reason}); start it, or choose another "
            "logger.mlflow.tracking_uri (null: a SQLite store in the output root)"
        ) from None


def default_tracking_uri(output_root: Path) -> str:
    return f"sqlite:///{(output_root / MLFLOW_DB).absolute()}"


# Stores that keep artifacts where they are told (MLflow's default: ./mlruns of the working folder).
DATABASE_SCHEMES = ("sqlite", "postgresql", "mysql", "mssql")


def default_artifact_location(tracking_uri: str, output_root: Path) -> Optional[str]:
    """Where a new experiment keeps its artifacts when ``artifact_location`` is null: beside a SQLite database
    file (DB_FOLDER/mlartifacts, so the default store's are OUTPUT_ROOT/mlartifacts), OUTPUT_ROOT/mlartifacts
    with a database server or an in-memory SQLite; None (the store decides) for a file store, which keeps
    them in its own folder, and for a tracking server."""
    scheme = tracking_uri.partition("://")[0].partition("+")[0] if "://" in tracking_uri else ""
    if scheme not in DATABASE_SCHEMES:
        return None
    folder = output_root
    if scheme == "sqlite":
        from sqlalchemy.engine import make_url

        database = make_url(tracking_uri).database  # sqlite:///rel.db -> rel.db, sqlite:////abs.db -> /abs.db
        if database and database != ":memory:" and not database.startswith("file:"):
            folder = Path(database).parent
    return (folder / MLARTIFACTS).absolute().as_uri()


def open_client(tracking_uri: str) -> Any:
    """An MlflowClient on the store. Older MLflow versions (3.0 among them) make ./mlruns in the working folder,
    empty, as they open a database store (the Default experiment's artifact root); nothing of autoenc's goes
    there (see default_artifact_location), so an empty ./mlruns that opening the store made is removed again."""
    from mlflow import MlflowClient

    stray = Path("mlruns")
    existed = stray.exists()
    client = MlflowClient(tracking_uri=tracking_uri)
    if not existed:
        try:
            stray.rmdir()  # only an empty folder: whatever is in one is left alone
        except OSError:
            pass
    return client


@register(MLflowConfig)
class MLflowLogger(Logger):
    @classmethod
    def finish_sweep(cls, sweep_dir: Path) -> None:
        if (sweep_dir / SWEEP_RECORD).is_file():
            finish_sweep_run(sweep_dir)

    def __init__(self, config: MLflowConfig, context: RunContext) -> None:
        super().__init__(config, context)
        self.tracking_uri = context.saved.get("tracking_uri") or config.tracking_uri
        self.tracking_uri = self.tracking_uri or default_tracking_uri(context.output_root)
        self.client: Any = None
        self.run_id: Optional[str] = None
        self.artifact_uri = ""
        self.pending: list[Any] = []  # metrics sent in one batch per epoch
        self.logged_through: dict[str, int] = {}  # a resumed run's last step per metric: never logged twice

    def start(self) -> dict[str, Any]:
        from filelock import FileLock

        # MLflow announces creating its tables at INFO; autoenc's screen is its own.
        logging.getLogger("mlflow").setLevel(logging.WARNING)
        logging.getLogger("alembic").setLevel(logging.WARNING)
        if self.tracking_uri.startswith(("http://", "https://")):
            check_server_answers(self.tracking_uri)
        self.client = open_client(self.tracking_uri)
        # One process at a time creates the store's tables, the experiment and a sweep's parent run.
        with FileLock(str(self._lock_path())):
            if self.context.saved.get("run_id"):
                self._reopen(self.context.saved["run_id"])
            else:
                self._create()
        return {"run_id": self.run_id, "tracking_uri": self.tracking_uri}

    def _lock_path(self) -> Path:
        where = self.context.sweep_dir or self.context.output_root
        where.mkdir(parents=True, exist_ok=True)
        return where / LOCK  # the same name in a sweep folder and in the output root

    def _experiment_id(self) -> str:
        config: MLflowConfig = self.config  # type: ignore[assignment]
        found = self.client.get_experiment_by_name(config.experiment)
        if found is not None:
            return found.experiment_id
        location = config.artifact_location or default_artifact_location(self.tracking_uri, self.context.output_root)
        return self.client.create_experiment(config.experiment, artifact_location=location)

    def _create(self) -> None:
        experiment_id = self._experiment_id()
        context = self.context
        tags = {"autoenc.run_dir": str(context.folder.absolute()), "autoenc.run_id": context.run_id}
        if context.sweep_dir is not None:
            tags["mlflow.parentRunId"] = self._sweep_parent(experiment_id)
        run = self.client.create_run(experiment_id, run_name=context.name, tags=tags)
        self.run_id, self.artifact_uri = run.info.run_id, run.info.artifact_uri
        from mlflow.entities import Param

        params = [Param(key, str(value)[:PARAM_VALUE_LENGTH]) for key, value in context.hparams.items()]
        for start in range(0, len(params), PARAMS_PER_BATCH):
            self.client.log_batch(self.run_id, params=params[start : start + PARAMS_PER_BATCH])

    def _sweep_parent(self, experiment_id: str) -> str:
        """The sweep's parent run: made by its first job, recorded in the sweep folder for the others."""
        sweep_dir = self.context.sweep_dir
        assert sweep_dir is not None
        record = read_json(sweep_dir / SWEEP_RECORD)
        if record.get("tracking_uri") == self.tracking_uri and record.get("experiment_id") == experiment_id:
            return record["run_id"]
        parent = self.client.create_run(
            experiment_id, run_name=sweep_dir.name, tags={"autoenc.sweep_dir": str(sweep_dir.absolute())}
        )
        write_json(
            sweep_dir / SWEEP_RECORD,
            {"tracking_uri": self.tracking_uri, "experiment_id": experiment_id, "run_id": parent.info.run_id},
        )
        return parent.info.run_id

    def _reopen(self, run_id: str) -> None:
        try:
            run = self.client.get_run(run_id)
        except Exception as error:  # noqa: BLE001 - MLflow raises its own exception types per store
            raise UserError(
                f"logger=mlflow: the run being resumed was logged as MLflow run {run_id} in {self.tracking_uri}, "
                f"which does not have it ({type(error).__name__}); restore that store to resume"
            ) from None
        self.run_id, self.artifact_uri = run_id, run.info.artifact_uri
        self.client.update_run(run_id, status="RUNNING")
        for key in run.data.metrics:
            steps = [metric.step for metric in self.client.get_metric_history(run_id, key)]
            self.logged_through[key] = max(steps, default=-1)

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        import time

        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        for key, value in metrics.items():
            if step > self.logged_through.get(key, -1):
                self.pending.append(Metric(key, float(value), now, step))

    def flush(self) -> None:
        pending, self.pending = self.pending, []
        for start in range(0, len(pending), 1000):  # log_batch takes at most 1000 metrics
            self.client.log_batch(self.run_id, metrics=pending[start : start + 1000])

    def log_images(self, images: dict[str, Path], step: int, final: bool = False) -> None:
        # The run's own artifact store, named by the run: MLflow 3.0's client looks a run's store up in the
        # process-wide default tracking URI instead of its own.
        from mlflow.store.artifact.artifact_repository_registry import get_artifact_repository

        repository = get_artifact_repository(self.artifact_uri)
        for tag, path in images.items():
            folder = str(Path(tag).parent) if final else f"{Path(tag).parent}/step_{step:07d}"
            repository.log_artifact(str(path), artifact_path=folder)

    def finish(self, status: str) -> None:
        if self.run_id is None:
            return
        self.flush()
        self.client.set_terminated(self.run_id, status=STATUS[status])
        self.run_id = None


def finish_sweep_run(sweep_dir: Path) -> None:
    """Close a sweep's parent run, when its jobs logged to MLflow: the comparison (summary.csv, report.html,
    the sweep's figures) as its artifacts and the best completed job's val_mse as ``best/val_mse``."""
    import csv

    sweep = SweepLayout(sweep_dir)
    record = read_json(sweep_dir / SWEEP_RECORD)
    if not record.get("run_id"):
        return
    from mlflow.store.artifact.artifact_repository_registry import get_artifact_repository

    client, run_id = open_client(record["tracking_uri"]), record["run_id"]
    repository = get_artifact_repository(client.get_run(run_id).info.artifact_uri)
    for name in (SUMMARY_CSV, REPORT_HTML):
        if (sweep_dir / name).is_file():
            repository.log_artifact(str(sweep_dir / name))
    for figure in sorted(sweep.figures.glob("*.png")):
        repository.log_artifact(str(figure), artifact_path=FIGURES)
    if sweep.summary_csv.is_file():
        with open(sweep.summary_csv, newline="") as handle:
            done = [row for row in csv.DictReader(handle) if row.get("status") == "completed" and row.get("val_mse")]
        if done:
            client.log_metric(run_id, "best/val_mse", min(float(row["val_mse"]) for row in done))
    client.set_terminated(run_id, status="FINISHED")
