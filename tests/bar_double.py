"""A stand-in for tqdm as the notebook client's progress bar uses it (``make_bar(total=, desc=, unit=)``,
``reset``, ``set_postfix_str``, ``refresh``, ``close``), keeping (unit, n, total) at every refresh."""


class RecordingBar:
    def __init__(self, total, desc, unit):
        self.total, self.desc, self.unit, self.n, self.resets, self.shown = total, desc, unit, 0, 0, []
        self.postfix = ""

    def reset(self, total):
        self.total, self.n, self.resets = total, 0, self.resets + 1

    def set_postfix_str(self, text, refresh):
        self.postfix = text

    def refresh(self):
        self.shown.append((self.unit, self.n, self.total))

    def close(self):
        pass
