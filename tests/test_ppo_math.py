"""PPO's arithmetic against values worked out by hand: GAE and value targets (a terminal step, a
time-out and the bootstrap at the rollout's end), the clipped surrogate, the value loss with and
without clipping, the entropy term and advantage normalisation. Each fails when the piece is broken
(e.g. a time-out's step not masked out changes the targets below: checked by hand once)."""

import math

import jax.numpy as jnp
import numpy as np
import pytest

from aci_jax.rl.ppo import PPOConfig, gae, loss_terms


def test_gae_terminal_timeout_and_bootstrap_by_hand():
    """One env, 4 steps, γ = λ = 0.5. Step 1 ends its episode (terminal), step 2 is a time-out
    (done and truncation), step 3 bootstraps from last_value = 100.

    δ_t = r_t + γ·(1 − term_t)·V_{t+1} − V_t, with V_4 = 100, and δ of the time-out masked to 0:
      δ = [1 + .5·20 − 10, 2 + 0 − 20, 0 (masked), 4 + .5·100 − 40] = [1, −18, 0, 14]
    A_t = δ_t + γλ·(1 − term_t)·(1 − trunc_t)·A_{t+1}, backwards:
      A_3 = 14; A_2 = 0 (the time-out cuts the sum); A_1 = −18 (terminal); A_0 = 1 + .25·(−18) = −3.5
    targets = A + V = [6.5, 2, 30, 54]."""
    r = jnp.array([1.0, 2.0, 3.0, 4.0])
    v = jnp.array([10.0, 20.0, 30.0, 40.0])
    done = jnp.array([0.0, 1.0, 1.0, 0.0])
    trunc = jnp.array([0.0, 0.0, 1.0, 0.0])
    targets, adv = gae(r, v, done, trunc, jnp.array(100.0), 0.5, 0.5)
    np.testing.assert_allclose(adv, [-3.5, -18.0, 0.0, 14.0], rtol=1e-6)
    np.testing.assert_allclose(targets, [6.5, 2.0, 30.0, 54.0], rtol=1e-6)
    # a time-out treated as terminal instead of masked would give A_2 = 3 − 30 = −27; treated as
    # nothing (not masked) A_2 = 3 + .5·40 − 30 + .25·14 = −3.5: both differ from the 0 above
    # batched over envs (time-major (T, n_envs)): each column is its own trajectory
    t2, a2 = gae(jnp.stack([r, r], 1), jnp.stack([v, v], 1), jnp.stack([done, 0 * done], 1),
                 jnp.stack([trunc, 0 * trunc], 1), jnp.array([100.0, 0.0]), 0.5, 0.5)
    np.testing.assert_allclose(a2[:, 0], adv, rtol=1e-6)
    # column 1: no episode end, bootstrap 0: δ = [1 + 10 − 10, 2 + 15 − 20, 3 + 20 − 30, 4 + 0 − 40]
    # = [1, −3, −7, −36]; A backwards with γλ = .25: A_3 = −36, A_2 = −7 − 9 = −16, A_1 = −3 − 4 = −7,
    # A_0 = 1 − 1.75 = −0.75
    np.testing.assert_allclose(a2[:, 1], [-0.75, -7.0, -16.0, -36.0], rtol=1e-6)


def test_gae_with_lambda_one_is_the_discounted_return_minus_value():
    """λ = 1, no episode end: A_0 = Σ γ^k r_k + γ^T·V_T − V_0 (here 1 + .9·1 + .81·1 + .729·10 − 2)."""
    targets, adv = gae(jnp.ones(3), jnp.array([2.0, 0.0, 0.0]), jnp.zeros(3), jnp.zeros(3), jnp.array(10.0), 0.9, 1.0)
    assert float(adv[0]) == pytest.approx(1 + 0.9 + 0.81 + 0.729 * 10 - 2, rel=1e-6)
    assert float(targets[2]) == pytest.approx(1 + 0.9 * 10, rel=1e-6)


def _cfg(**kw):
    return PPOConfig(**{"clip_range": 0.2, "normalize_advantage": False, "vf_coef": 0.5, "ent_coef": 0.0, **kw})


# Ratios 1.5, 0.5, 1.0, 1.1 (new − old log-probabilities), advantages 1, 1, −1, −2.
LOG_RATIO = jnp.log(jnp.array([1.5, 0.5, 1.0, 1.1]))
ADV = jnp.array([1.0, 1.0, -1.0, -2.0])
TARGET, VALUE = jnp.array([1.0, 2.0, 3.0, 4.0]), jnp.ones(4)
LOG_STD = jnp.array([0.0, math.log(0.5)])  # two action dims


def _terms(cfg, old_value=None, adv=ADV):
    return loss_terms(LOG_RATIO, jnp.zeros(4), adv, VALUE, VALUE if old_value is None else old_value, TARGET,
                      LOG_STD, cfg)


def test_clipped_surrogate_value_loss_and_total_by_hand():
    """min(r·A, clip(r, .8, 1.2)·A) = [min(1.5, 1.2), min(.5, .8), −1, min(−2.2, −2.2)] = [1.2, .5, −1, −2.2]:
    policy loss −mean = 0.375. Value loss mean((target − v)²) = (0 + 1 + 4 + 9)/4 = 3.5. Total
    0.375 + 0.5·3.5 = 2.125. Clip fraction: |r − 1| > .2 for 1.5 and .5: 0.5."""
    loss, aux = _terms(_cfg())
    assert float(aux["policy_loss"]) == pytest.approx(0.375, rel=1e-5)
    assert float(aux["value_loss"]) == pytest.approx(3.5, rel=1e-6)
    assert float(loss) == pytest.approx(2.125, rel=1e-5)
    assert float(aux["clip_fraction"]) == 0.5
    # approx_kl = mean(r − 1 − log r)
    kl = np.mean([x - 1 - math.log(x) for x in (1.5, 0.5, 1.0, 1.1)])
    assert float(aux["approx_kl"]) == pytest.approx(kl, rel=1e-5)


def test_value_clipping_and_entropy_bonus_by_hand():
    """clip_range_vf = .5, old values [1.2, 1, 0, 4]: clipped = old + clip(v − old, ±.5) = [1, 1, .5, 3.5],
    (target − clipped)² = [0, 1, 6.25, .25]; max with the unclipped [0, 1, 4, 9] = [0, 1, 6.25, 9]:
    mean 4.0625. Entropy Σ_dims (log σ + ½(1 + log 2π)) = log .5 + 1 + log 2π; with ent_coef .1 the
    total is 0.375 + .5·4.0625 − .1·entropy."""
    loss, aux = _terms(_cfg(clip_range_vf=0.5, ent_coef=0.1), old_value=jnp.array([1.2, 1.0, 0.0, 4.0]))
    assert float(aux["value_loss"]) == pytest.approx(4.0625, rel=1e-6)
    ent = math.log(0.5) + 1 + math.log(2 * math.pi)
    assert float(aux["entropy"]) == pytest.approx(ent, rel=1e-6)
    assert float(loss) == pytest.approx(0.375 + 0.5 * 4.0625 - 0.1 * ent, rel=1e-5)


def test_advantage_normalisation_by_hand():
    """normalize_advantage: A ← (A − mean)/(std + 1e-8); mean −.25, std √(6.75/4) = 1.2990:
    A = [.9623, .9623, −.5774, −1.3472]; surrogate terms [1.2·.9623, .5·.9623, 1.0·(−.5774),
    min(1.1·(−1.3472), 1.1·(−1.3472))]; the same loss as passing those advantages unnormalised."""
    std = math.sqrt(6.75 / 4)
    norm = (np.array([1, 1, -1, -2]) + 0.25) / std
    np.testing.assert_allclose(norm, [0.96225, 0.96225, -0.57735, -1.34715], atol=1e-5)
    _, a = _terms(_cfg(normalize_advantage=True))
    _, b = _terms(_cfg(), adv=jnp.asarray(norm, jnp.float32))
    expected = -np.mean([1.2 * norm[0], 0.5 * norm[1], 1.0 * norm[2], 1.1 * norm[3]])
    assert float(a["policy_loss"]) == pytest.approx(expected, rel=1e-5)
    assert float(b["policy_loss"]) == pytest.approx(expected, rel=1e-5)
