-- 005_task_input_version: the version of the task's definition whose schema
-- its input was enqueued for.
--
-- A task definition may declare a version and an upgrade function from
-- older inputs. A worker claiming a task enqueued for an older version
-- upgrades the input before validating it, instead of failing it for good
-- as an input its schema now refuses. Rows from before this migration were
-- enqueued by definitions without a version: version 1.
--
-- A column with a constant default is added without rewriting the table;
-- statements of the previous release name their columns and never this one.
ALTER TABLE pgbg.task ADD COLUMN input_version integer NOT NULL DEFAULT 1
  CONSTRAINT task_input_version_in_range CHECK (input_version >= 1);
