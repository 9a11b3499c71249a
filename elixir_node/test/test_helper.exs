# Evaluations run in processes of their own and the suite shares two cores
# with itself: give every expected message time to arrive (refutes use
# `refute_received`, which does not wait).
ExUnit.start(assert_receive_timeout: 5_000)
