"""The approvals callback Lambda: the approvers' links, behind API Gateway."""
