"""The error of `medrl merge`, shared by the merge and its independent verifier (they share nothing else)."""


class MergeError(RuntimeError):
    """The checkpoint cannot be merged or the merged model does not verify; the message says why."""
