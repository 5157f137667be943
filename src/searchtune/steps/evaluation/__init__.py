"""The evaluation step's parts: drift, the gate's rule, the report, the model card and the summary."""
