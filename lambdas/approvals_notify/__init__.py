"""The approvals notify Lambda (the workflow's first step: mails each approver their own
link), and what the approvals Lambdas share: their environment and their email texts."""
