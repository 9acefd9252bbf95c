from job.cli import entry

entry()
