"""Names of the MLflow tags and aliases the platform reads and writes.

One table so that training, promotion, serving and monitoring agree.
"""

CHAMPION = "champion"
CHALLENGER = "challenger"
PREVIOUS_CHAMPION = "previous-champion"

DATASET = "aipaas.dataset"
DATA_HASH = "aipaas.data_hash"  # DVC md5 of the dataset version trained on
DATA_ROWS = "aipaas.data_rows"
SUITE_PASSED = "aipaas.suite_passed"
GIT_COMMIT = "aipaas.git_commit"
MODEL_DEFINITION = "aipaas.model"
PROMOTION_STATUS = "aipaas.promotion"  # "promoted" | "rejected" | "rolled-back"
PROMOTION_REASONS = "aipaas.promotion_reasons"
PROMOTED_AT = "aipaas.promoted_at"
PROMOTION_GATES = "aipaas.promotion_gates"  # JSON: every gate's value, threshold, pass
PROMOTION_DECIDED_BY = "aipaas.promotion_decided_by"
