"""The learner: its loop (loop), its periodic eval/* (eval_metrics) and its MLflow side (tracking);
the command that starts it is pydreamer/train.py."""
