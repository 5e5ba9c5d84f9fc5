"""Every name the platform reads or writes in MLflow: aliases, tags, metrics, artifacts.

One table so that training, promotion, serving and monitoring agree; no other
module spells one of these strings. Serving reads what it needs of a model
definition from the version's tags (``LOG_INPUTS``, ``TARGET``, ...), so a
serving host needs the registry, not the ``models/`` folder.
"""

# --- registry aliases --------------------------------------------------------
CHAMPION = "champion"
CHALLENGER = "challenger"
PREVIOUS_CHAMPION = "previous-champion"
CANARY = "canary"  # the version taking a canary or shadow share (display; the chain decides)

# --- tags on a training run and its registered version -----------------------
DATASET = "aipaas.dataset"
DATA_HASH = "aipaas.data_hash"  # DVC md5 of the dataset version trained on
DATA_ROWS = "aipaas.data_rows"
SUITE_PASSED = "aipaas.suite_passed"
GIT_COMMIT = "aipaas.git_commit"
CODE_COMMIT = "aipaas.code_commit"  # the platform code's commit (training run)
RAY_NODES = "aipaas.ray_nodes"
# JSON: the dataset's dvc.lock entries (every output's md5, the incoming files'
# md5), on the registered version; `aipaas data restore` rebuilds the data from it.
DATA_LOCK = "aipaas.data_lock"
TUNE_RESULTS = "aipaas.tune_results"  # the search's trial table's directory (path or URI)
MODEL_DEFINITION = "aipaas.model"
# What serving needs of the definition, written on the version at training time.
TARGET = "aipaas.target"
LOG_INPUTS = "aipaas.log_inputs"  # "true" | "false": may serving store raw inputs

# --- tags on one trial's nested run ------------------------------------------
TRIAL_ID = "aipaas.trial_id"
NODE_ID = "aipaas.node_id"
ERROR = "aipaas.error"

# --- promotion, on the registered version -------------------------------------
PROMOTION_STATUS = "aipaas.promotion"  # "promoted" | "rejected" | "rolled-back"
PROMOTION_REASONS = "aipaas.promotion_reasons"
PROMOTED_AT = "aipaas.promoted_at"
PROMOTION_GATES = "aipaas.promotion_gates"  # JSON: every gate's value, threshold, pass
PROMOTION_DECIDED_BY = "aipaas.promotion_decided_by"
# JSON: the signed promotion record serving verifies before it loads a version
# (aipaas.training.attestation); a version without a valid one never serves.
ATTESTATION = "aipaas.attestation"

# --- drift checks (their own MLflow runs) --------------------------------------
KIND = "aipaas.kind"
KIND_DRIFT_CHECK = "drift-check"
DRIFT_VERSION = "aipaas.drift_version"
DRIFT_RETRAIN = "aipaas.drift_retrain"

# --- metrics -------------------------------------------------------------------
HOLDOUT_PREFIX = "holdout_"  # holdout_<metric>, e.g. holdout_roc_auc
CV_PREFIX = "cv_"
LATENCY_PREFIX = "latency_"
LATENCY_P50_MS = "latency_p50_ms"
LATENCY_P99_MS = "latency_p99_ms"  # one-row predict p99: the latency gate reads it
LATENCY_BATCH_P50_MS = "latency_batch_p50_ms"
LATENCY_BATCH_P99_MS = "latency_batch_p99_ms"
LATENCY_BATCH_ROWS = "latency_batch_rows"
TRIALS_OK = "trials_ok"
TRIALS_FAILED = "trials_failed"
TIME_PREFIX = "time_"  # time_<step>_s: seconds a training step took
STD_SUFFIX = "_std"  # cv_<metric>_std on a trial's run
TRIAL_DURATION_S = "duration_s"

# --- metrics on a drift check's run ---------------------------------------------
DRIFT_PREFIX = "drift_"  # drift_<feature>: that feature's drift score
DRIFT_ROWS = "drift_rows"
DRIFT_FEATURES_DRIFTING = "drift_features_drifting"
DRIFT_RETRAIN_METRIC = "drift_retrain"  # 1.0 when the check asked for a retrain
DRIFT_PREDICTION = "drift_prediction"  # drift of the model's outputs
FEEDBACK_ACCURACY = "feedback_accuracy"  # accuracy on labelled served rows
FEEDBACK_LABELLED_ROWS = "feedback_labelled_rows"


def drift_metric(feature: str) -> str:
    """The logged name of one feature's drift score: ``radius`` -> ``drift_radius``."""
    return f"{DRIFT_PREFIX}{feature}"


# --- params on a training run ----------------------------------------------------
SETTING_PREFIX = "setting."  # setting.tune.num_samples, setting.ray.nodes, ...


def holdout_metric(metric: str) -> str:
    """The logged name of a holdout metric: ``roc_auc`` -> ``holdout_roc_auc``."""
    return f"{HOLDOUT_PREFIX}{metric}"


def cv_metric(metric: str) -> str:
    """The logged name of a cross-validated metric: ``roc_auc`` -> ``cv_roc_auc``."""
    return f"{CV_PREFIX}{metric}"


def step_seconds(step: str) -> str:
    """The logged name of a training step's duration: ``search`` -> ``time_search_s``."""
    return f"{TIME_PREFIX}{step}_s"


# --- artifacts -----------------------------------------------------------------
MODEL_ARTIFACT = "model"  # the logged model's name within its run
EVALUATION_ARTIFACT = "evaluation"  # report, plots, per-class table
REFERENCE_PROFILE_DIR = "reference_profile"
REFERENCE_PROFILE = "reference_profile/profile.bin"  # whylogs profile of the training data
DRIFT_ARTIFACT = "drift"  # a drift check's HTML report
DATASET_VERSION_ARTIFACT = "dataset_version.json"  # the DatasetVersion trained on
DATA_LOCK_ARTIFACT = "dataset_lock.json"  # the dataset's dvc.lock entries, as DATA_LOCK

# --- run names -----------------------------------------------------------------
TRAIN_RUN_PREFIX = "train-"  # train-<model>: a training's parent run
TRIAL_RUN_PREFIX = "trial-"  # trial-007: one trial's nested run
