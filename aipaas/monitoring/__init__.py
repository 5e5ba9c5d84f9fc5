"""Monitor: served rows -> profile windows -> drift checks -> retraining.

- :mod:`.spool`: serving's append-only hand-off and the profiler process that
  turns it into whylogs profile windows;
- :mod:`.drift_stats`: the drift scores and the policy's verdict (pure);
- :mod:`.drift_report`: the HTML page, the drift history and the MLflow run;
- :mod:`.drift`: one check of a champion (windows, reference, verdict, record);
- :mod:`.retrain`: the guardrails, the feedback export and the retrain history.
"""
