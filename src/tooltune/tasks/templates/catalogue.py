"""Every tool-tier template with its tier, and whether it is held out: `heldout` templates only
appear in the test split (task shapes training never saw), `heldout_tools` ones only in the
`heldout_tools` split. The order matters: `splits.sample_tasks` draws templates by position, so
reordering them changes every sample.
"""

from __future__ import annotations

from tooltune.config import TaskTier
from tooltune.tasks.templates import (
    browser,
    database,
    facts,
    files,
    flights,
    heldout_tools,
    images,
    maths,
)
from tooltune.tasks.templates.draft import Template

S, Q, P, C = TaskTier.SIMPLE, TaskTier.MULTI_TOOL_SEQ, TaskTier.MULTI_TOOL_PAR, TaskTier.COMPLEX

TEMPLATES: list[Template] = [
    Template("calc", S, maths.t_calc),
    Template("solve", S, maths.t_solve),
    Template("integral", S, maths.t_integral, heldout=True),
    Template("python", S, maths.t_python),
    Template(
        "company_fact_search",
        S,
        facts.make_fact(["ceo", "hq", "revenue", "company_founded"], "search"),
    ),
    Template(
        "company_fact_sql", S, facts.make_fact(["ceo", "hq", "revenue", "employees"], "database")
    ),
    Template("person_fact_search", S, facts.make_fact(["net_worth", "age", "city"], "search")),
    Template("person_fact_sql", S, facts.make_fact(["net_worth", "age"], "database")),
    Template("place_fact_search", S, facts.make_fact(["population", "place_founded"], "search")),
    Template("place_fact_sql", S, facts.make_fact(["population", "area"], "database")),
    Template("place_area_search", S, facts.make_fact(["area"], "search"), heldout=True),
    Template("stock_file", S, files.t_stock_file),
    Template("quarter_file", S, files.t_quarter_file),
    Template("budget_file", S, files.t_budget_file),
    Template("shape_count", S, images.t_shape_count),
    Template("product_price", S, database.t_product_price),
    Template("order_quantity", S, database.t_order_quantity, heldout=True),
    Template("ceo_networth_search", Q, facts.make_chain("ceo", "net_worth", "search")),
    Template("ceo_networth_sql", Q, facts.make_chain("ceo", "net_worth", "database")),
    Template("ceo_age", Q, facts.make_chain("ceo", "age", "search")),
    Template("hq_population_sql", Q, facts.make_chain("hq", "population", "database")),
    Template("hq_population_search", Q, facts.make_chain("hq", "population", "search")),
    Template("hq_area", Q, facts.make_chain("hq", "area", "database"), heldout=True),
    Template("ceo_city", Q, facts.make_chain("ceo", "city", "search")),
    Template(
        "person_city_population",
        Q,
        facts.make_chain("city", "population", "database"),
        heldout=True,
    ),
    Template("density", Q, facts.t_density),
    Template("order_total", Q, database.t_order_total),
    Template("quarter_sum", Q, files.t_quarter_sum),
    Template("atlas_fact", Q, browser.t_atlas_fact),
    Template("stock_value", Q, files.t_stock_value, heldout=True),
    Template("company_age", Q, facts.t_company_age),
    Template("compare", P, facts.t_compare),
    Template("older", P, facts.t_older),
    Template("sum", P, facts.t_sum),
    Template("two_calcs", P, maths.t_two_calcs),
    Template("two_warehouses", P, files.t_two_warehouses),
    Template("two_images", P, images.t_two_images, heldout=True),
    Template("hq_pair", P, facts.t_hq_pair),
    Template("mixed_sources", P, facts.t_mixed_sources, heldout=True),
    Template("book", C, flights.t_book),
    Template("book_for_ceo", C, flights.t_book_for_ceo, heldout=True),
    Template("book_to_hq", C, flights.make_book_to_hq(["search", "database"])),
    Template("moved_budget", C, files.t_moved_budget),
    Template("budget_share", C, files.t_budget_share),
    Template("broken_sql", C, database.t_broken_sql),
    Template("image_report", C, images.t_image_report),
    Template("hq_mayor", C, browser.t_hq_mayor, heldout=True),
    Template("fact_variety", S, facts.t_fact_variety, train_only=True),
    Template("chain_variety", Q, facts.t_chain_variety, train_only=True),
    Template("two_facts", P, facts.t_two_facts, train_only=True),
    Template("home_city_atlas", C, browser.t_home_city_atlas, train_only=True),
    Template("registry_fact", S, heldout_tools.t_reg_simple, heldout_tools=True),
    Template("registry_chain", Q, heldout_tools.t_reg_chain, heldout_tools=True),
    Template("registry_sum", P, heldout_tools.t_reg_sum, heldout_tools=True),
    Template("registry_compare", P, heldout_tools.t_reg_compare, heldout_tools=True),
    Template("registry_book", C, heldout_tools.t_reg_book, heldout_tools=True),
]
TEMPLATES_BY_ID = {t.id: t for t in TEMPLATES}
