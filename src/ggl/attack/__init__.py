"""The attacker's side: objective, label inference, optimisers, baselines, controls.
``ATTACKS`` maps params' ``method`` to an attack function: the built-in methods are registered
here, a ``package.module:callable`` plugs in a user's own. ``LOCKSTEP`` gives the built-in
methods that can attack several updates side by side their lockstep form.
"""

from ggl.attack import lockstep
from ggl.attack.baselines import LEARNS_LABEL, pixel_attack, pixel_lockstep
from ggl.attack.controls import CONTROL_ATTACKS, noise_gradient_lockstep
from ggl.attack.run import AttackFn, LockstepFn, ggl_attack
from ggl.plugins import Registry
from ggl.settings import GGL_OPTIMISERS

ATTACKS: Registry[AttackFn] = Registry("attack method")
for _method, _optimiser in GGL_OPTIMISERS.items():
    ATTACKS.register(_method)(ggl_attack(_optimiser))
for _method, _learns in LEARNS_LABEL.items():
    ATTACKS.register(_method)(pixel_attack(_learns))
for _method, _control in CONTROL_ATTACKS.items():
    ATTACKS.register(_method)(_control)

LOCKSTEP: dict[str, LockstepFn] = {
    "ggl-adam": lockstep.ggl_adam, "noise-gradient": noise_gradient_lockstep,
    **{method: pixel_lockstep(learns) for method, learns in LEARNS_LABEL.items()}}
