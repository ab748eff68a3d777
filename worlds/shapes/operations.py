"""Operations on scenes: applying them, checking that they fit together, their ImgEdit edit type."""

from worlds.shapes.types import COMPOUND_EDIT_TYPE, EDIT_TYPES, Operation, OpKind, Scene, Shape


def apply_operation(scene: Scene, operation: Operation) -> Scene:
    """The scene after one operation; ValueError if it does not apply (missing shape, no change)."""
    if operation.kind is OpKind.BACKGROUND:
        if operation.new_colour == scene.background:
            raise ValueError(f"the background is already {scene.background}")
        return Scene(str(operation.new_colour), scene.shapes)
    shape = scene.shape(str(operation.colour))
    if shape is None:
        raise ValueError(f"the scene has no {operation.colour} shape")
    others = tuple(s for s in scene.shapes if s is not shape)
    if operation.kind is OpKind.REMOVE:
        return Scene(scene.background, others)
    if scene.shape(str(operation.new_colour)) is not None:
        raise ValueError(f"the scene already has a {operation.new_colour} shape")
    recoloured = Shape(str(operation.new_colour), shape.kind, shape.cell)
    return Scene(scene.background, (*others, recoloured))


def apply_operations(scene: Scene, operations: tuple[Operation, ...]) -> Scene:
    """The scene after the operations, in order."""
    for operation in operations:
        scene = apply_operation(scene, operation)
    return scene


def check_operations(scene: Scene, operations: tuple[Operation, ...]) -> None:
    """ValueError unless the operations refer to the source scene's objects, each to a different
    one, and apply together; then their order does not matter (they commute)."""
    if not operations:
        raise ValueError("no operation")
    subjects = [op.colour or "background" for op in operations]
    if len(set(subjects)) != len(subjects):
        raise ValueError(f"two operations edit the same object: {subjects}")
    new_colours = [op.new_colour for op in operations if op.kind is OpKind.RECOLOUR]
    if len(set(new_colours)) != len(new_colours):
        raise ValueError(f"two shapes would get the same colour: {new_colours}")
    for operation in operations:
        apply_operation(scene, operation)  # each refers to the source scene
    apply_operations(scene, operations)  # and they apply together


def edit_type_of(operations: tuple[Operation, ...]) -> str:
    """ImgEdit edit type of an instruction made of these operations."""
    if len(operations) == 1:
        return EDIT_TYPES[operations[0].kind]
    return COMPOUND_EDIT_TYPE
