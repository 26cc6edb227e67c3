"""Just-in-time approval of risky statements: requests, votes, links, backends, the stage."""
