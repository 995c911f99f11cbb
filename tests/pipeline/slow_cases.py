"""A Dask worker preload for tests/pipeline/test_dask_cluster.py: every case a worker encodes
takes FDN_TEST_CASE_DELAY_S seconds longer (`dask worker --preload tests.pipeline.slow_cases`).

A tiny case encodes in milliseconds, so a build would be over before a test can kill or add a
worker; the delay keeps each case running long enough for the test to act while tasks are in
flight. The task is sent to the worker by reference (`fdn.archive_index.distributed.encode_case`),
so replacing that attribute here is what the worker runs; the encoding itself is unchanged.
"""

import os
import time

from fdn.archive_index import distributed

_encode_case = distributed.encode_case
DELAY_S = float(os.environ.get("FDN_TEST_CASE_DELAY_S", "0"))


def encode_case(task):
    time.sleep(DELAY_S)
    return _encode_case(task)


distributed.encode_case = encode_case
