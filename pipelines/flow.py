"""Run the pipeline as a Prefect flow: ``python -m pipelines.flow [params.yaml]``.

The flow itself is ``embedforge.flow.pipeline``, so the CLI, tests and a Prefect
deployment all import the same object.
"""

import sys

from embedforge.flow import pipeline

if __name__ == "__main__":
    pipeline(params=sys.argv[1] if len(sys.argv) > 1 else "params.yaml")
