"""The baseline for cold start and round-trip figures: a CloudEvent function that does nothing.

Served by the same functions-framework CLI as function/main.py, with the same arguments:

  functions-framework --source benchmarks/bare_function.py --target handle --signature-type cloudevent
"""

import functions_framework
from cloudevents.http.event import CloudEvent


@functions_framework.cloud_event
def handle(cloud_event: CloudEvent) -> None:
    """Accept the event and answer 200 with an empty body."""
