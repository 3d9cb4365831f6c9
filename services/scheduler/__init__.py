"""The scheduler service. The run lifecycle: creation, state actions, cancellation, admission and
queueing, timeouts, retries; run read models; dispatch of work to executors.
"""
