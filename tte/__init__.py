"""Import the Hub files at the repository root as the package `tte` (`from tte.modeling_tte import TTEModel`).

The root files (`configuration_tte.py`, `processing_tte.py`, `modeling_tte.py`, ...) must stay flat at the root with
relative imports, as Hub custom code requires; pointing this package's path at the root lets training code, tests and
an editable install (`pip install -e .`) import them as one package.
"""

import os


__path__ = [os.path.dirname(os.path.dirname(os.path.abspath(__file__)))]
