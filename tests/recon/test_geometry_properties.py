"""Property tests (hypothesis) of Sim(3) algebra and Umeyama over wide ranges of scale and rotation."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from recon.geometry import Sim3, se3_exp, se3_log, so3_exp, umeyama

finite = st.floats(-10.0, 10.0, allow_nan=False)
vec3 = st.tuples(finite, finite, finite).map(np.array)
rotvec = st.tuples(*[st.floats(-3.0, 3.0)] * 3).map(np.array)
log_scale = st.floats(-4.0, 4.0)


@settings(max_examples=40, deadline=None)
@given(rv=rotvec, t=vec3, ls=log_scale, seed=st.integers(0, 2**16))
def test_umeyama_recovers_any_sim3(rv: np.ndarray, t: np.ndarray, ls: float, seed: int) -> None:
    S = Sim3(float(np.exp(ls)), so3_exp(rv), t)
    src = np.random.default_rng(seed).normal(size=(10, 3))
    s, R, t_est = umeyama(src, S.apply_points(src), with_scale=True)
    assert abs(s / S.s - 1.0) < 1e-9
    assert np.abs(R - S.R).max() < 1e-9
    np.testing.assert_allclose(Sim3(s, R, t_est).apply_points(src), S.apply_points(src), atol=1e-9 * (1 + S.s * 10))


@settings(max_examples=40, deadline=None)
@given(rv1=rotvec, t1=vec3, ls1=log_scale, rv2=rotvec, t2=vec3, ls2=log_scale)
def test_sim3_group_laws(rv1: np.ndarray, t1: np.ndarray, ls1: float, rv2: np.ndarray, t2: np.ndarray,
                         ls2: float) -> None:
    a = Sim3(float(np.exp(ls1)), so3_exp(rv1), t1)
    b = Sim3(float(np.exp(ls2)), so3_exp(rv2), t2)
    ab_inv = (a @ b).inverse()
    expected = b.inverse() @ a.inverse()
    M = expected.matrix()
    np.testing.assert_allclose(ab_inv.matrix(), M, rtol=1e-9, atol=1e-9 * np.abs(M).max())


@settings(max_examples=60, deadline=None)
@given(rho=vec3, rv=st.tuples(*[st.floats(-1.7, 1.7)] * 3).map(np.array))
def test_se3_log_inverts_exp(rho: np.ndarray, rv: np.ndarray) -> None:
    xi = np.concatenate([rho, rv])  # |omega| < pi keeps the logarithm unique
    np.testing.assert_allclose(se3_log(se3_exp(xi)), xi, atol=1e-8)
