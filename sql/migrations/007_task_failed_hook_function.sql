-- 007_task_failed_hook_function: the onFailed hook inserted by a function
-- called once per hook, not by an INSERT in every failing statement.
--
-- The enqueue trigger (task_notify_inserted) is statement level: it fires
-- for every INSERT statement on pgbg.task, even one that inserts no row,
-- and then wakes every idle worker. An INSERT of hooks written into the
-- statements that fail tasks (a failure batch, the release of a dead
-- worker's tasks, the lease rescue that every host runs each check
-- interval) fired it each time they ran, hooks or not. Called only for a
-- task that failed for good and wants its hook, this function's INSERT
-- fires it only then.
CREATE FUNCTION pgbg.enqueue_failed_hook(task_id bigint, task_queue text, task_name text, task_priority smallint,
    task_payload jsonb, task_attempts integer, task_error jsonb) RETURNS bigint
  LANGUAGE sql VOLATILE AS $$
  INSERT INTO pgbg.task (queue, name, payload, priority)
  VALUES (task_queue, task_name || ':on-failed',
    jsonb_build_object('id', task_id::text, 'name', task_name, 'queue', task_queue, 'input', task_payload,
      'attempts', task_attempts, 'error', task_error),
    task_priority)
  RETURNING id
$$;
