"""Create and seed the app database `dreamseed` from the world model (`lab.world`).

`create_app_schema(conn)` runs lab/app_schema.sql (idempotent: IF NOT EXISTS everywhere).
`seed_app_db(conn, world)` loads every table with COPY in ONE transaction and returns the row
count per table. Idempotency: it TRUNCATEs all app tables (RESTART IDENTITY) and reloads them,
so seeding twice gives the same content as seeding once (the world is deterministic), and a
failure leaves the previous content untouched (the transaction rolls back). Explicit ids are
copied, then each bigserial sequence is moved past the largest id so later INSERTs work.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from pathlib import Path

import psycopg

from phasegate.lab.world import World

__all__ = ["APP_TABLES", "QUESTIONS", "SCHEMA_FILE", "create_app_schema", "seed_app_db"]

SCHEMA_FILE = Path(__file__).with_name("app_schema.sql")

# table -> COPY column list (order of World.rows(table)); questions come from QUESTIONS.
APP_TABLES: dict[str, tuple[str, ...]] = {
    "users": ("id", "created_at", "country", "acquisition_channel"),
    "daily_active_users": ("day", "active_users"),
    "user_sessions": ("id", "user_id", "started_at", "duration_s"),
    "subscriptions": ("id", "user_id", "plan", "monthly_price_usd", "started_at",
                      "canceled_at"),
    "payments": ("id", "user_id", "subscription_id", "paid_at", "amount_usd", "status"),
    "infra_costs": ("month", "component", "amount_usd"),
    "marketing_spend": ("day", "channel", "amount_usd"),
    "nps_responses": ("id", "user_id", "answered_at", "score"),
    "feedback": ("id", "user_id", "created_at", "category", "message"),
    "enterprise_inquiries": ("id", "created_at", "company", "seats"),
    "questions": ("subject", "body", "answer"),
}
_SERIAL_TABLES = ("users", "user_sessions", "subscriptions", "payments", "nps_responses",
                  "feedback", "enterprise_inquiries", "questions")

QUESTIONS: tuple[tuple[str, str, str], ...] = (
    ("math", "이차방정식 x^2 + 5x + 6 = 0 을 풀어주세요.", "x = -2 또는 x = -3"),
    ("math", "Solve the quadratic equation x^2 + 5x + 6 = 0.", "x = -2 or x = -3"),
    ("math", "이차방정식 x^2 - 4x + 4 = 0 의 해를 구하세요.", "x = 2 (중근)"),
    ("math", "Solve 2x^2 - 3x - 2 = 0.", "x = 2 or x = -1/2"),
    ("math", "근의 공식을 이용하여 x^2 + 2x - 1 = 0 을 푸세요.", "x = -1 ± √2"),
    ("math", "Find the discriminant of 3x^2 + x + 5 = 0 and say how many real roots it has.",
     "D = 1 - 60 = -59 < 0, no real roots"),
    ("math", "삼각함수의 미분을 설명해주세요: (sin x)' 는?", "(sin x)' = cos x"),
    ("math", "What is the derivative of cos x?", "-sin x"),
    ("math", "tan x 를 미분하면?", "sec^2 x = 1 / cos^2 x"),
    ("math", "Differentiate f(x) = sin(2x).", "f'(x) = 2 cos(2x)"),
    ("math", "f(x) = x^2 sin x 의 도함수를 구하세요.", "f'(x) = 2x sin x + x^2 cos x"),
    ("math", "Differentiate f(x) = e^x cos x.", "f'(x) = e^x (cos x - sin x)"),
    ("math", "∫ 2x dx 를 계산하세요.", "x^2 + C"),
    ("math", "Evaluate the integral of cos x from 0 to π/2.", "1"),
    ("math", "lim_{x→0} sin x / x 의 값은?", "1"),
    ("math", "Find the slope of the tangent to y = x^3 at x = 2.", "12"),
    ("math", "등차수열 3, 7, 11, ... 의 10번째 항은?", "39"),
    ("math", "Sum of the geometric series 1 + 1/2 + 1/4 + ... (infinite)?", "2"),
    ("math", "log_2 32 의 값은?", "5"),
    ("math", "Solve the system x + y = 5, x - y = 1.", "x = 3, y = 2"),
    ("math", "주사위를 두 번 던질 때 합이 7일 확률은?", "1/6"),
    ("math", "How many ways can 5 students stand in a row?", "5! = 120"),
    ("math", "sin^2 x + cos^2 x 의 값은?", "1"),
    ("math", "Find the vertex of y = x^2 - 6x + 5.", "(3, -4)"),
    ("math", "행렬 [[1,2],[3,4]] 의 행렬식은?", "-2"),
    ("math", "If f(x) = 3x + 1, find the inverse function.", "f^-1(x) = (x - 1) / 3"),
    ("physics", "뉴턴의 운동 법칙 세 가지를 설명해주세요.",
     "관성의 법칙, 가속도의 법칙 F = ma, 작용-반작용의 법칙"),
    ("physics", "Explain Newton's laws of motion.",
     "1) inertia, 2) F = ma, 3) every action has an equal and opposite reaction"),
    ("physics", "질량 2 kg 인 물체에 10 N 의 힘을 가하면 가속도는?", "5 m/s^2"),
    ("physics", "A 1,000 kg car accelerates at 3 m/s^2. What net force acts on it?", "3,000 N"),
    ("physics", "자유낙하하는 물체가 2초 후 갖는 속력은? (g = 9.8 m/s^2)", "19.6 m/s"),
    ("physics", "A ball is dropped from 20 m. How long until it hits the ground? (g = 10 m/s^2)",
     "2 s"),
    ("physics", "운동량 보존 법칙을 설명해주세요.", "외력이 없으면 계의 전체 운동량은 일정하다"),
    ("physics", "What is the kinetic energy of a 2 kg mass moving at 3 m/s?", "9 J"),
    ("physics", "높이 5 m 에 있는 질량 1 kg 물체의 위치에너지는? (g = 10 m/s^2)", "50 J"),
    ("physics", "State the work-energy theorem.", "Net work done equals the change in kinetic "
     "energy"),
    ("physics", "등속 원운동에서 구심가속도의 식은?", "a = v^2 / r"),
    ("physics", "A 0.5 kg mass on a spring with k = 200 N/m: what is the period?",
     "T = 2π√(m/k) ≈ 0.31 s"),
    ("physics", "옴의 법칙을 설명하세요.", "V = IR"),
    ("physics", "Two 6 Ω resistors in parallel: what is the equivalent resistance?", "3 Ω"),
    ("physics", "전력 P 를 전압과 전류로 나타내면?", "P = VI"),
    ("physics", "What is the speed of light in vacuum?", "about 3.0 × 10^8 m/s"),
    ("physics", "파장 2 m, 진동수 5 Hz 인 파동의 속력은?", "10 m/s"),
    ("physics", "Explain why a satellite in orbit is in free fall.",
     "Gravity supplies the centripetal force; it falls around the Earth"),
    ("physics", "마찰계수 0.2, 질량 5 kg 물체의 운동마찰력은? (g = 10 m/s^2)", "10 N"),
    ("physics", "What does the first law of thermodynamics state?",
     "ΔU = Q - W: energy is conserved"),
    ("physics", "빗면에서 물체에 작용하는 중력의 빗면 방향 성분은?", "mg sin θ"),
    ("physics", "A projectile is launched at 20 m/s at 30°. What is its time of flight? "
     "(g = 10 m/s^2)", "2 s"),
    ("physics", "쿨롱 법칙의 식을 쓰세요.", "F = k q1 q2 / r^2"),
    ("physics", "What is the impulse of a 4 N force acting for 2.5 s?", "10 N·s"),
)


def create_app_schema(conn: psycopg.Connection) -> None:
    """Create the app tables, indexes and comments (idempotent) and commit."""
    with conn.cursor() as cur:
        cur.execute(SCHEMA_FILE.read_text(encoding="utf-8").encode())
    conn.commit()


def _copy(cur: psycopg.Cursor, table: str, rows: Iterable[tuple[object, ...]]) -> int:
    cols = ", ".join(APP_TABLES[table])
    n = 0
    with cur.copy(f"COPY {table} ({cols}) FROM STDIN") as copy:
        for row in rows:
            copy.write_row(row)
            n += 1
    return n


def _reset_sequences(cur: psycopg.Cursor) -> None:
    for table in _SERIAL_TABLES:
        cur.execute(
            f"SELECT setval(pg_get_serial_sequence('{table}', 'id'), "
            f"coalesce((SELECT max(id) FROM {table}), 0) + 1, false)")


def seed_app_db(conn: psycopg.Connection, world: World) -> dict[str, int]:
    """Replace the content of every app table with `world` (TRUNCATE + COPY, one transaction,
    committed). Returns {table: rows loaded}. Creates the schema first if missing."""
    create_app_schema(conn)
    counts: dict[str, int] = {}
    with conn.transaction(), conn.cursor() as cur:
        cur.execute(f"TRUNCATE {', '.join(APP_TABLES)} RESTART IDENTITY")
        for table in APP_TABLES:
            rows = QUESTIONS if table == "questions" else world.rows(table)
            counts[table] = _copy(cur, table, rows)
        _reset_sequences(cur)
    conn.commit()
    return counts


def _main() -> None:  # pragma: no cover - manual timing helper
    import argparse
    from datetime import UTC, datetime

    ap = argparse.ArgumentParser(description="seed the dreamseed app database")
    ap.add_argument("dsn")
    ap.add_argument("--days", type=int, default=90)
    args = ap.parse_args()
    world = World.build(datetime.now(UTC), days=args.days)
    t = time.perf_counter()
    with psycopg.connect(args.dsn) as conn:
        counts = seed_app_db(conn, world)
    print(counts, f"{time.perf_counter() - t:.2f}s")


if __name__ == "__main__":  # pragma: no cover
    _main()
