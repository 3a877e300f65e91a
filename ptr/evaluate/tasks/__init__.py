"""One module per benchmark. Each registers its task(s) with ``@register_task``; the registry imports
every module here on first lookup, so a new task needs no change anywhere else."""
