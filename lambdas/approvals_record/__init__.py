"""The approvals record Lambda: the workflow's last step, making the outcome durable."""
