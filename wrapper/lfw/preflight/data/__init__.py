"""`lfw data check` and `convert`, split by what each module looks at:

check (entry points: check_dataset, check_rows, read_samples; folders and dataset_dirs), rows (every row of one
file), readers (containers -> rows, also eval's benchmark files), layout (format, columns, tags; dataset_layout),
columns (LLaMA-Factory's column names and each format's defaults), options (validated arguments), fields, alpaca,
messages, preference, media (the rows of each layout), samples (a row as LLaMA-Factory aligns it), lengths (token
counts), convert (convert_to_jsonl), report (DataReport, DataProblem). Import from the module that defines a name;
this file stays empty so that `lfw render`, which needs only `layout`, loads nothing else.
"""
