"""The report's sections: each turns :class:`~cardioclr.study.report.collect.StudyData` into
document blocks (:mod:`cardioclr.study.html`), in the order :mod:`..build` assembles them."""
