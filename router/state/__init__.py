"""What the router knows about its endpoints: live stats, the loads a ranking reads, breakers."""
