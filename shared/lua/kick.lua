-- Enqueue a drain job unless one is waiting.
return ensure_drain(job_id, now_ms)
