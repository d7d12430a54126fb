"""The model output table (fit_multiple's row per mst_key, or fit's one row), made in the calling
transaction before training when it is new, so that the driver writes each model's row as soon as that
model's state is final (its last training hop came back) while the workers still train other models or
evaluate. Writing hundreds of MB of state runs at the server's speed (stored_state), so off the critical
path it costs a call little besides the last model's row. A warm start makes the table after training,
when the table it read from is dropped (until then other sessions may still read that one)."""

from __future__ import annotations

from dataclasses import dataclass, field

from madlib_dl import catalog
from madlib_dl.identifiers import TableName
from madlib_dl.training import stored_state

_COLUMNS = {  # keyed: fit_multiple's layout; else fit's (MADlib's column order in each)
    True: "mst_key INTEGER PRIMARY KEY, model_weights BYTEA, model_arch JSON, __dist_key__ INTEGER, "
          "optimizer_state BYTEA",
    False: "model_weights BYTEA, model_arch JSON, optimizer_state BYTEA",
}


@dataclass
class ModelTable:
    table: TableName
    schema: str  # the extension's
    keyed: bool  # a row per mst_key (fit_multiple), else madlib_keras_fit's single row
    written: set = field(default_factory=set)  # the mst_keys whose row is in the table

    def create(self, db) -> None:
        db.execute(f"CREATE TABLE {self.table.sql(db)} ({_COLUMNS[self.keyed]})")
        catalog.store_uncompressed(db, self.table, ("model_weights", "optimizer_state"))

    def create_reserved(self, db, reserved: list) -> list:
        """Make the table in place of its reservation (outputs.reserve), and let its side table's go (the
        first large optimizer state makes it); the reservations left to release after training."""
        mine = {self.table, stored_state.side_table(self.table)}
        for table in reserved:
            if table in mine:
                db.execute(f"DROP TABLE {table.sql(db)}")
        self.create(db)
        return [table for table in reserved if table not in mine]

    def write(self, db, mst_key: int, model) -> None:
        """A model's row (a driver.ModelProgress whose state is final), once. Its optimizer state is let
        go once written; its weights are kept, as the run's final evaluation may still send them."""
        if mst_key in self.written:
            return
        table = self.table.sql(db)
        if self.keyed:
            db.execute(f"INSERT INTO {table} VALUES ($1, NULL, $2::json, $3, NULL)",
                       [mst_key, model.config.model_arch, model.last_segment], ["integer", "text", "integer"])
            stored_state.write_state(db, self.schema, self.table, mst_key, model, "WHERE mst_key = $2", [mst_key],
                                     ["integer"], keep_weights=True)
        else:
            db.execute(f"INSERT INTO {table} VALUES (NULL, $1::json, NULL)", [model.config.model_arch], ["text"])
            stored_state.write_state(db, self.schema, self.table, stored_state.SINGLE_KEY, model, keep_weights=True)
        self.written.add(mst_key)

    def writer(self, db):
        """The driver's ``on_final``: writes a model's row as soon as its state is final."""
        return lambda mst_key, model: self.write(db, mst_key, model)

    def write_rest(self, db, models: dict) -> None:
        """Every model's row not written yet, each model's weights let go of once its row is in."""
        for mst_key, model in sorted(models.items()):
            self.write(db, mst_key, model)
            model.weights = None
