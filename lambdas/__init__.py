"""AWS Lambda handlers: thin adapters (aws-lambda-powertools) over the custos core."""
