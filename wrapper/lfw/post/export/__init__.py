"""`lfw export`: merge a run's LoRA adapters into the unquantized base, verify the result, record its lineage.

plan.py decides (ExportPlan, plan_from_run, plan_from_adapters), merge.py writes the model files (LLaMA-Factory's
own merge, or a copy of a full stage), worker.py verifies them in a fresh interpreter, lineage.py records what
went in, and run.py carries a plan out in that order (`export`). Nothing is imported here: the worker's path
stays free of lfw's dependencies.
"""
