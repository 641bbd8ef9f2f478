"""The example's corpus: short paragraphs on a few everyday topics, written for it (no download)."""

from __future__ import annotations

__all__ = ["PASSAGES"]

PASSAGES: list[str] = [
    "Honey bees live in colonies of tens of thousands of workers and one queen. The workers are female "
    "and do every job in the hive, from cleaning cells to foraging for nectar.",
    "Bees make honey from nectar. A forager carries nectar back to the hive, where other workers fan it "
    "with their wings until most of the water evaporates and the honey thickens.",
    "A honey bee tells her sisters where flowers are with the waggle dance. The angle of the dance shows "
    "the direction of the flowers and its length shows how far away they are.",
    "The queen bee lays up to two thousand eggs a day in spring. She mates early in her life and stores "
    "enough sperm for years of laying.",
    "Green tea and black tea come from the same plant, Camellia sinensis. Black tea is left to oxidise "
    "after the leaves are rolled, while green tea is heated soon after picking to stop oxidation.",
    "Tea should be brewed with water that suits the leaf. Green tea tastes best with water well below "
    "boiling, around seventy to eighty degrees, while black tea takes water just off the boil.",
    "Oolong tea is partly oxidised, between green and black tea. Its leaves are bruised and rested so "
    "that only their edges darken before they are fired.",
    "A volcano forms where molten rock called magma reaches the surface. Once it erupts, the molten rock "
    "is called lava, and it cools into new rock such as basalt.",
    "Shield volcanoes have gentle slopes built by runny lava that flows far before it cools. The volcanoes "
    "of Hawaii are shield volcanoes.",
    "Stratovolcanoes are steep cones built from layers of ash and thick lava. Their eruptions can be "
    "explosive because gas is trapped in sticky magma.",
    "Bread rises because yeast eats sugars in the dough and releases carbon dioxide. Kneading builds "
    "gluten, a stretchy network that traps the gas in small bubbles.",
    "Sourdough bread is leavened by a starter, a culture of wild yeast and lactic acid bacteria. The "
    "bacteria give sourdough its sour taste and help the loaf keep longer.",
    "Bread dough should rest after kneading so the gluten relaxes. A dough that rises in a cool place "
    "for longer develops more flavour than one that rises fast in a warm place.",
    "The moon has phases because we see different parts of its sunlit half as it orbits the earth. A "
    "full moon happens when the earth lies between the sun and the moon.",
    "The moon causes most of the ocean tides. Its gravity pulls the water on the near side of the earth "
    "into a bulge, and a second bulge forms on the far side.",
    "A lunar eclipse happens when the earth's shadow falls on the moon. The moon often turns a deep red "
    "because the earth's atmosphere bends red sunlight into the shadow.",
    "Bicycles stay upright mostly because the rider steers into a fall. The shape of the front fork also "
    "helps the front wheel turn in the direction the bike leans.",
    "A bicycle chain should be cleaned and oiled regularly. A dry chain wears the gears quickly and makes "
    "pedalling noisy and harder.",
    "Tyre pressure changes how a bicycle rides. Higher pressure rolls faster on smooth roads, while lower "
    "pressure grips better and feels softer on rough ground.",
    "Photosynthesis is how plants make sugar from light. Leaves take in carbon dioxide from the air and "
    "water from the roots and release oxygen as a by-product.",
    "Leaves are green because chlorophyll absorbs red and blue light and reflects green light. In autumn "
    "the chlorophyll breaks down and other colours show through.",
    "Plants need nitrogen to grow leaves. Gardeners add compost or manure to the soil to give plants the "
    "nitrogen they need.",
    "Coffee beans are the roasted seeds of the coffee cherry. Light roasts keep more of the bean's fruity "
    "acidity, while dark roasts taste more bitter and smoky.",
    "Espresso is made by forcing hot water through finely ground coffee at high pressure. A good shot "
    "takes about twenty five to thirty seconds and has a layer of crema on top.",
    "Coffee should be ground just before brewing because ground coffee loses its aroma within minutes. "
    "The grind size should match the brewing method.",
    "Rainbows appear when sunlight is bent and reflected inside raindrops. Each colour bends by a "
    "slightly different angle, which spreads white light into a band of colours.",
    "A rainbow is always on the opposite side of the sky from the sun. To see one, stand with the sun "
    "behind you and look towards the rain.",
    "Thunder is the sound of air expanding suddenly when lightning heats it. Counting the seconds between "
    "the flash and the thunder tells how far away the storm is, about three seconds per kilometre.",
    "Penguins live almost only in the southern hemisphere. They cannot fly, but their wings work as "
    "flippers and make them fast swimmers.",
    "Emperor penguins breed during the Antarctic winter. The male keeps the egg warm on his feet for "
    "about two months while the female feeds at sea.",
]
